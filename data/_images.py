"""Helpers of the image datasets: checking the data root, finding the image files of a folder, and decoding one
image file with an error naming it."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import rgb_to_grayscale

from utils import ConfigError, DataError


def data_root(root: str, dataset: str, holds: str) -> Path:
    """`root` as a Path, or a ConfigError saying which folder is missing and what it should hold."""
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(
            f"{dataset}: data root {path.resolve()} does not exist: set --data.root to the folder holding {holds}"
        )
    return path


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")  # what torchvision.io.decode_image reads


def visible(folder: Path) -> list[Path]:
    """The entries of `folder` whose names do not start with ".", sorted."""
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def image_files(folder: Path, who: str) -> list[Path]:
    """The image files under `folder` and its subfolders, sorted; any other visible file is a ConfigError that starts
    with `who` (the dataset or option reading the folder), so that nothing is left out silently."""
    files = []
    for path in visible(folder):
        if path.is_dir():
            files += image_files(path, who)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(path)
        else:
            raise ConfigError(
                f"{who}: {path} is not an image file ({', '.join(IMAGE_EXTENSIONS)}); convert it or move it out of "
                f"{folder}"
            )
    return files


_CPP_LOCATION = re.compile(r"^.*?\.cpp:\d+, ")  # the "decode_png, /path/decode_png.cpp:79, " prefix of decode errors


def load_image(path: Path, grayscale: bool) -> torch.Tensor:
    """Decode `path` to a float32 C x H x W tensor in [0, 1] (C = 1 if `grayscale` else 3).

    An animated GIF is refused rather than cut to one frame: which frame shows the class is the user's choice.
    """
    try:
        image = decode_image(str(path), mode=ImageReadMode.GRAY if grayscale else ImageReadMode.RGB)
    except RuntimeError as error:
        reason = _CPP_LOCATION.sub("", str(error))
        raise DataError(
            f"cannot decode image {path} ({reason}); replace it with a valid PNG, JPEG, GIF or WebP file"
        ) from error
    if image.dim() == 4:
        raise DataError(
            f"image {path} is an animated GIF ({image.shape[0]} frames); save the frame to learn from as a still image"
        )
    if grayscale and image.shape[0] == 3:  # torchvision decodes GIFs to RGB whatever the mode asked
        image = rgb_to_grayscale(image)
    return image.float() / torch.iinfo(image.dtype).max  # uint8, or uint16 for 16-bit PNGs
