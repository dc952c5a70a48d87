"""A small VGG-style convolutional classifier for images of any size (MNIST, CIFAR-10...)."""

import torch
from torch import nn

from utils import ConfigError


class CNN(nn.Module):
    """Blocks of (3×3 conv, batch norm, ReLU) each ending in a 2×2 max pool, then global average pooling and a
    linear head. Pools round up, so any image size works.

    Args:
        in_channels: Channels of the input images: 1 for grayscale, 3 for RGB.
        num_classes: Number of classes to predict.
        channels: Output channels of each block, e.g. [32, 64, 128]; each block halves the image size.
        convs_per_block: Convolutions in each block before its pooling.
        dropout: Dropout probability before the linear head; 0 for none.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, ...] = (32, 64, 128),
        convs_per_block: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels or min(in_channels, num_classes, convs_per_block, *channels) < 1:
            raise ConfigError(
                "CNN sizes must be ≥ 1 with at least one block, got "
                f"in_channels={in_channels}, num_classes={num_classes}, channels={list(channels)}, "
                f"convs_per_block={convs_per_block}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"CNN dropout is a probability in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_channels
        for out in channels:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                width = out
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
