"""The straight-line regression model: y = weight * x + bias with both parameters learned."""

import torch
from torch import nn


class LinearRegressionModel(nn.Module):
    """Linear regression on one feature, with an explicit `nn.Parameter` for weight and for bias."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1))
        self.bias = nn.Parameter(torch.randn(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x + self.bias
