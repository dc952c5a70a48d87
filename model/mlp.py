"""The multilayer perceptron, with configurable widths: 20→256→10 by default, 1000→100→10 or any other."""

import torch
from torch import nn

from utils import ConfigError, did_you_mean

# The element-wise activations in torch.nn: Threshold needs arguments, while GLU, the softmaxes and attention
# change the shape or mix features.
_NOT_ELEMENTWISE = {"Threshold", "GLU", "Softmin", "Softmax", "Softmax2d", "LogSoftmax", "MultiheadAttention"}
ACTIVATIONS = tuple(sorted(name for name in nn.modules.activation.__all__ if name not in _NOT_ELEMENTWISE))


def activation_class(name: str) -> type[nn.Module]:
    """The activation class `torch.nn.<name>`, or a ConfigError suggesting the closest valid name."""
    if name in ACTIVATIONS:
        return getattr(nn, name)
    raise ConfigError(
        f"unknown activation {name!r}: {did_you_mean(name, ACTIVATIONS)}"
        f"Choose a class name from torch.nn: {', '.join(ACTIVATIONS)}"
    )


class MLP(nn.Module):
    """Fully connected network: flattens each sample, then Linear + activation (+ dropout) per hidden layer.

    Args:
        input_size: Features per sample once flattened, e.g. 784 for 1×28×28 images.
        output_size: Outputs per sample: the number of classes, or of regression targets.
        hidden_sizes: Width of each hidden layer, e.g. [512, 256]; [] for a linear model.
        activation: Activation class in torch.nn, e.g. ReLU, GELU, Tanh, LeakyReLU, SiLU.
        dropout: Dropout probability after each hidden activation; 0 for none.
    """

    def __init__(
        self,
        input_size: int = 20,
        output_size: int = 10,
        hidden_sizes: tuple[int, ...] = (256,),
        activation: str = "ReLU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = [input_size, *hidden_sizes, output_size]
        if any(size < 1 for size in sizes):
            raise ConfigError(f"MLP layer sizes must be ≥ 1, got input_size → hidden_sizes → output_size = {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"MLP dropout is a probability in [0, 1), got {dropout}")
        act = activation_class(activation)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(sizes[:-2], sizes[1:-1], strict=True):
            layers += [nn.Linear(width_in, width_out), act()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.reshape(x.shape[0], -1))
