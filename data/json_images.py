"""The JSON-annotated image folder (CIFAR-10 layout): image files and their labels listed in one JSON file per split."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from data._images import data_root, load_image
from utils import ConfigError


class JsonImages(Dataset):
    """Images listed in `ROOT/annotations/<name>_{train,test}.json`, files in `ROOT/{train,test}_<name>/`.

    Each JSON file is `{"images": [file names], "categories": [integer labels]}`, plus an optional
    `"classes": [names]`. Without class names there are max(train label) + 1 classes, named "0", "1", ...
    Both splits take their classes from the train file, so they always agree. File names are paths inside the
    split's folder (none absolute or climbing out with '..'); a file listed twice must have one label.

    Args:
        root: Folder holding annotations/, train_<name>/ and test_<name>/.
        train: The training split if True, else the test split.
        name: Dataset name in the file and folder names (cifar10 reads annotations/cifar10_train.json).
        grayscale: Load images as 1 grey channel instead of 3 RGB ones.
    """

    def __init__(self, root: str, train: bool = True, name: str = "cifar10", grayscale: bool = False) -> None:
        base = data_root(root, "json_images", f"annotations/, train_{name}/ and test_{name}/")
        self.grayscale = grayscale
        train_file = base / "annotations" / f"{name}_train.json"
        train_images, train_labels, classes = _read_annotations(train_file)
        if classes is None:
            classes = [str(i) for i in range(max(train_labels) + 1)]
        self.classes: list[str] = classes
        if train:
            annotation_file, images, labels = train_file, train_images, train_labels
        else:
            annotation_file = base / "annotations" / f"{name}_test.json"
            images, labels, test_classes = _read_annotations(annotation_file)
            if test_classes is not None and test_classes != classes:
                raise ConfigError(
                    f"json_images: the 'classes' of {annotation_file} differ from those of {train_file}; "
                    f"make the two lists the same (or drop the one in the test file)"
                )
        for image, label in zip(images, labels, strict=True):
            if label >= len(classes):
                raise ConfigError(
                    f"json_images: {annotation_file}: image {image!r} has label {label}, but there are "
                    f"{len(classes)} classes (from {train_file}); labels must be in 0..{len(classes) - 1}"
                )
        self.folder = base / f"{'train' if train else 'test'}_{name}"
        if not self.folder.is_dir():
            raise ConfigError(
                f"json_images: image folder {self.folder} not found; it should hold the files {annotation_file} lists"
            )
        missing = [image for image in images if not (self.folder / image).is_file()]
        if missing:
            raise ConfigError(
                f"json_images: {len(missing)} of the {len(images)} images {annotation_file} lists are not in "
                f"{self.folder}, the first being {self.folder / missing[0]}; add the files or remove them from the JSON"
            )
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.folder / self.images[index], self.grayscale), self.labels[index]


def _read_annotations(path: Path) -> tuple[list[str], list[int], list[str] | None]:
    """The file names, labels and (if given) class names in one annotation file, checked for shape and type."""
    if not path.is_file():
        raise ConfigError(f"json_images: annotation file {path} not found; check --data.dataset_args.root and name")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"json_images: {path} is not valid JSON ({error}); fix or regenerate the file") from error
    fix = 'it must be an object {"images": [file names], "categories": [integer labels]}'
    if not isinstance(data, dict):
        raise ConfigError(f"json_images: {path}: {fix}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ConfigError(f"json_images: {path}: {key!r} is missing or not a list; {fix}")
    images, labels = data["images"], data["categories"]
    if len(images) != len(labels):
        raise ConfigError(
            f"json_images: {path} lists {len(images)} images but {len(labels)} categories; give one label per image"
        )
    if not images:
        raise ConfigError(f"json_images: {path} lists no images; add some")
    seen: dict[Path, int] = {}  # each file's label, by its path as the folder's files are named
    for image, label in zip(images, labels, strict=True):
        if not isinstance(image, str):
            raise ConfigError(f"json_images: {path}: image {image!r} is not a file name (a string)")
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise ConfigError(f"json_images: {path}: image {image!r} has label {label!r}; labels must be integers >= 0")
        name = Path(image)
        if name.is_absolute() or ".." in name.parts:
            raise ConfigError(
                f"json_images: {path}: image {image!r} lies outside the image folder; name each file by its path "
                "inside that folder (not absolute, no '..')"
            )
        # The same file twice with one label is kept (oversampling it); with two labels it cannot be right.
        if seen.setdefault(name, label) != label:
            raise ConfigError(
                f"json_images: {path} lists image {image!r} twice, with labels {seen[name]} and {label}; "
                "keep the right one"
            )
    classes = data.get("classes")
    if classes is not None and (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ConfigError(f"json_images: {path}: 'classes' must be a non-empty list of distinct names (strings)")
    return images, labels, classes
