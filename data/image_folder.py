"""Images sorted into one folder per class, as torchvision's ImageFolder reads them.

Written with pathlib and torchvision.io, not torchvision.datasets.ImageFolder, which skips unknown files silently.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from data._images import data_root, image_files, load_image, visible
from utils import ConfigError


class ImageFolder(Dataset):
    """Images in `ROOT/train/<class>/` and `ROOT/test/<class>/`, searched recursively.

    The classes are the sorted subfolder names of `ROOT/train`, in both splits, so labels agree; the test
    split may lack classes but not add any. Files and folders whose names start with "." are ignored; any
    other file that is not a PNG, JPEG, GIF or WebP image is an error, so that nothing is left out silently.

    Args:
        root: Folder holding train/ and test/.
        train: The training split if True, else the test split.
        grayscale: Load images as 1 grey channel instead of 3 RGB ones.
    """

    def __init__(self, root: str, train: bool = True, grayscale: bool = False) -> None:
        base = data_root(root, "image_folder", "train/ and test/")
        self.grayscale = grayscale
        self.classes: list[str] = _class_folders(base / "train")
        split = base / ("train" if train else "test")
        folders = _class_folders(split)
        extra = [name for name in folders if name not in self.classes]
        if extra:
            raise ConfigError(
                f"image_folder: {split / extra[0]} is a class that {base / 'train'} lacks; "
                f"the test classes must be among the training ones ({', '.join(self.classes)})"
            )
        self.files: list[Path] = []
        self.labels: list[int] = []
        for name in folders:
            files = image_files(split / name, "image_folder")
            if not files:
                raise ConfigError(f"image_folder: class folder {split / name} has no images; add some or remove it")
            self.files += files
            self.labels += [self.classes.index(name)] * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.files[index], self.grayscale), self.labels[index]


def _class_folders(split: Path) -> list[str]:
    """The sorted class folder names in `split`, which must hold folders only."""
    if not split.is_dir():
        raise ConfigError(f"image_folder: folder {split} not found; make it, with one subfolder of images per class")
    entries = visible(split)
    stray = [path for path in entries if not path.is_dir()]
    if stray:
        raise ConfigError(f"image_folder: {stray[0]} is a file; {split} must hold one subfolder of images per class")
    if not entries:
        raise ConfigError(f"image_folder: {split} has no class folders; add one subfolder of images per class")
    return [path.name for path in entries]
