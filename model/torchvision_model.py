"""Any torchvision classifier (resnet18, mobilenet_v3_small, vit_b_16...), optionally from pretrained weights.

Transfer learning: load the published ImageNet weights from a local file, replace the 1000-class head with one for
this task's classes, and optionally freeze the rest as a fixed feature extractor.
"""

import math
import re
import textwrap
from pathlib import Path

import torch
import torchvision
from torch import nn

from utils import ConfigError, did_you_mean

# Archs whose output in train mode adds auxiliary classifiers' logits. They are built without those heads, as
# torchvision does; its published weights include them, so with weights_path they are built, loaded, then dropped.
_AUX_HEADS = {"inception_v3": ("AuxLogits",), "googlenet": ("aux1", "aux2")}
# DenseNet's published files use the old layer names `norm.1`, `conv.2`...; torchvision renames them on loading.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)


def architectures() -> list[str]:
    """Names of torchvision's classification models."""
    return torchvision.models.list_models(module=torchvision.models)


class TorchvisionModel(nn.Module):
    """A torchvision classification model with a new head for `num_classes` and a first conv for `in_channels`.

    Args:
        arch: Model name in torchvision.models, e.g. resnet18, mobilenet_v3_small, efficientnet_b0, vit_b_16.
        num_classes: Number of classes: the new head's outputs.
        in_channels: Channels of the input images; other than 3, the first conv is replaced to take them.
        weights_path: Local state_dict file of `arch` as torchvision publishes it (pretrained); null for random.
        freeze_backbone: Train only the new head, keeping the (pretrained) rest fixed.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        in_channels: int = 3,
        weights_path: str | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        if arch not in architectures():
            raise ConfigError(
                f"unknown torchvision arch {arch!r}: {did_you_mean(arch, architectures())}"
                "The choices are torchvision.models.list_models(module=torchvision.models)"
            )
        if min(num_classes, in_channels) < 1:
            raise ConfigError(f"num_classes and in_channels must be ≥ 1, got {num_classes} and {in_channels}")
        pretrained = weights_path is not None
        options = {}
        if arch in _AUX_HEADS:
            # No transform_input: the data module normalises, and the net must not change with weights_path,
            # which checkpoints drop (they hold the trained weights).
            options = {"aux_logits": pretrained, "init_weights": not pretrained, "transform_input": False}
        self.model = torchvision.models.get_model(arch, weights=None, **options)
        if pretrained:
            _load(self.model, arch, weights_path)
        if arch in _AUX_HEADS:
            self.model.aux_logits = False
            for name in _AUX_HEADS[arch]:
                setattr(self.model, name, None)
        self.head_name = _replace_head(self.model, arch, num_classes)
        if in_channels != 3:
            _replace_first_conv(self.model, in_channels, pretrained)
        if freeze_backbone:
            head = self.model.get_submodule(self.head_name)
            for parameter in self.model.parameters():
                parameter.requires_grad = False
            for parameter in head.parameters():
                parameter.requires_grad = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _load(model: nn.Module, arch: str, weights_path: str) -> None:
    """Load the state_dict in `weights_path` into `model`, strictly; every problem is a ConfigError."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        published = torchvision.models.get_model_weights(arch).DEFAULT.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(published).name
        found = " (that file is on this machine: pass its path)" if cached.is_file() else ""
        raise ConfigError(
            f"weights_path {weights_path!r}: no such file; weights are never downloaded at run time. torchvision "
            f"keeps the {arch} weights it downloads as {cached}{found}. To get them on a machine with internet, run "
            f"`python -c \"import torch, torchvision; torch.save(torchvision.models.get_model_weights('{arch}')"
            f".DEFAULT.get_state_dict(), '{arch}.pth')\"`, copy {arch}.pth here and pass its path"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged or foreign file fails in many ways (zip, pickle, struct, EOF...)
        raise ConfigError(f"weights_path {weights_path!r} is not a readable state_dict file: {error}") from error
    if not isinstance(state_dict, dict):
        raise ConfigError(f"weights_path {weights_path!r} holds a {type(state_dict).__name__}, not a state_dict")
    state_dict = {_OLD_DENSENET_KEY.sub(r"\1\2", key): value for key, value in state_dict.items()}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        details = textwrap.shorten(str(error), 500, placeholder=" ...")
        raise ConfigError(
            f"weights_path {weights_path!r} does not fit torchvision's {arch}: use that arch's published "
            f"weights (torchvision.models.get_model_weights('{arch}')). {details}"
        ) from error


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return model.get_submodule(parent), attr


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> str:
    """Replace the last Linear in module order, the classifier of every torchvision arch that has one; its name."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"torchvision's {arch} has no linear classifier head to replace: choose another arch")
    parent, attr = _parent_and_attr(model, linears[-1])
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return linears[-1]


def _replace_first_conv(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Make the first Conv2d take `in_channels`; from pretrained weights, adapt its RGB kernel (timm's rule)."""
    name = next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))
    parent, attr = _parent_and_attr(model, name)
    old = getattr(parent, attr)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        old.bias is not None,
        old.padding_mode,
    )
    if pretrained:
        with torch.no_grad():
            if in_channels == 1:
                new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
            else:
                # Repeat the kernel over the channels (R, G, B, R, ...), scaled to keep the response's size.
                repeats = math.ceil(in_channels / old.in_channels)
                weight = old.weight.repeat(1, repeats, 1, 1)[:, :in_channels]
                new.weight.copy_(weight * (old.in_channels / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    setattr(parent, attr, new)
