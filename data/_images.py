"""Decoding one image file for the image-folder datasets, with an error that names the file."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image

from utils import ConfigError

_CPP_LOCATION = re.compile(r"^.*?\.cpp:\d+, ")  # the "decode_png, /path/decode_png.cpp:79, " prefix of decode errors


def load_image(path: Path, grayscale: bool) -> torch.Tensor:
    """Decode `path` to a float32 C x H x W tensor in [0, 1] (C = 1 if `grayscale` else 3)."""
    try:
        image = decode_image(str(path), mode=ImageReadMode.GRAY if grayscale else ImageReadMode.RGB)
    except RuntimeError as error:
        reason = _CPP_LOCATION.sub("", str(error))
        raise ConfigError(
            f"cannot decode image {path} ({reason}); replace it with a valid PNG, JPEG, GIF or WebP file"
        ) from error
    return image.float() / torch.iinfo(image.dtype).max  # uint8, or uint16 for 16-bit PNGs
