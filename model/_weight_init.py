"""Weight initialisation of conv and linear layers: one scheme, chosen by name, for every such layer."""

import torch
from torch import nn

from utils import ConfigError, did_you_mean

SCHEMES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal", "orthogonal")

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# Activations with a gain rule of their own in nn.init.calculate_gain (LeakyReLU's also depends on its slope).
_GAIN_NAMES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SELU: "selu"}
_NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")
_LEAKY_RELU_SLOPE = 0.01  # nn.LeakyReLU's default


def detect_nonlinearity(net: nn.Module) -> tuple[str, float | None]:
    """The `calculate_gain` name (and LeakyReLU's slope) of the first activation module in `net`.

    ReLU, LeakyReLU, Tanh, Sigmoid and SELU map to their own rule. Any other activation (GELU, SiLU, ELU, Mish...)
    maps to "relu", the closest rule for those ReLU-like functions, and so does a net with no activation module
    (one that calls `F.relu` in `forward`, for instance).
    """
    for module in net.modules():
        if isinstance(module, nn.LeakyReLU):
            return "leaky_relu", module.negative_slope
        for cls, name in _GAIN_NAMES.items():
            if isinstance(module, cls):
                return name, None
        if type(module).__module__ == nn.modules.activation.__name__ and not isinstance(module, nn.MultiheadAttention):
            return "relu", None
    return "relu", None


def init_weights(net: nn.Module, scheme: str, bias: float = 0.0, nonlinearity: str | None = None) -> None:
    """Initialise `net` in place: conv and linear weights by `scheme`, their biases to `bias`, norms to identity.

    Args:
        net: The network.
        scheme: One of SCHEMES; "normal" is N(0, 0.01) whatever the nonlinearity.
        bias: Value of every conv and linear bias.
        nonlinearity: Name for `nn.init.calculate_gain` ("relu", "tanh", "leaky_relu"...) that sets the kaiming
            rule and the xavier/orthogonal gain; None detects it from the net (see `detect_nonlinearity`).
    """
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unknown init scheme {scheme!r}: {did_you_mean(scheme, SCHEMES)}Choose from {', '.join(SCHEMES)}"
        )
    if nonlinearity is None:
        nonlinearity, param = detect_nonlinearity(net)
    elif nonlinearity in _NONLINEARITIES:
        param = _LEAKY_RELU_SLOPE if nonlinearity == "leaky_relu" else None
    else:
        raise ConfigError(
            f"unknown init nonlinearity {nonlinearity!r}: {did_you_mean(nonlinearity, _NONLINEARITIES)}"
            f"Choose from {', '.join(_NONLINEARITIES)}, or leave it unset to detect the net's activation"
        )
    gain = nn.init.calculate_gain(nonlinearity, param)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, _WEIGHTED):
                _init_weight(module.weight, scheme, gain, nonlinearity, param or 0.0)
                if module.bias is not None:
                    nn.init.constant_(module.bias, bias)
            elif isinstance(module, _NORMS):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def _init_weight(weight: torch.Tensor, scheme: str, gain: float, nonlinearity: str, slope: float) -> None:
    if scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain)
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, a=slope, nonlinearity=nonlinearity)
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(weight, a=slope, nonlinearity=nonlinearity)
    elif scheme == "normal":
        nn.init.normal_(weight, 0.0, 0.01)
    else:
        nn.init.orthogonal_(weight, gain)
