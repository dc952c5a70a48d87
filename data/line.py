"""The straight-line regression's data: points on the line y = weight * x + bias."""

import torch
from torch.utils.data import Dataset


class LineDataset(Dataset):
    """`x` from `start` to `end` (excluded) by `step`, `y = weight * x + bias` plus optional Gaussian noise.

    The split is by position: the first `train_fraction` of the points train, the rest test, so the test points lie
    beyond the training range.

    Args:
        train: The training part if True, else the test part.
        weight: True slope.
        bias: True intercept.
        start: First x.
        end: Upper bound of x (excluded).
        step: Spacing of x.
        train_fraction: Share of the points, from the start, used for training.
        noise_std: Standard deviation of the Gaussian noise added to y (0 for none).
        noise_seed: Seed of that noise, so train and test see the same line.
    """

    def __init__(
        self,
        train: bool = True,
        weight: float = 0.7,
        bias: float = 0.3,
        start: float = 0.0,
        end: float = 1.0,
        step: float = 0.02,
        train_fraction: float = 0.8,
        noise_std: float = 0.0,
        noise_seed: int = 0,
    ) -> None:
        if step <= 0 or end <= start:
            raise ValueError(f"line: need step > 0 and end > start, got start={start}, end={end}, step={step}")
        if not 0 < train_fraction < 1:
            raise ValueError(f"line: train_fraction must be between 0 and 1, got {train_fraction}")
        if noise_std < 0:
            raise ValueError(f"line: noise_std must be >= 0, got {noise_std}")
        self.weight, self.bias = weight, bias
        x = torch.arange(start, end, step).unsqueeze(1)
        y = weight * x + bias
        if noise_std:
            y = y + noise_std * torch.randn(y.shape, generator=torch.Generator().manual_seed(noise_seed))
        n_train = int(train_fraction * len(x))
        part = slice(None, n_train) if train else slice(n_train, None)
        self.x, self.y = x[part], y[part]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]
