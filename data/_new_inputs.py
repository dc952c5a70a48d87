"""New data to predict on, prepared as the training data was: a folder of images, or a file of feature rows.

`python main.py predict --ckpt_path CKPT --data.predict_path PATH` reads PATH with what the checkpoint records of the
training data (`describe`, kept in the data module's state in every checkpoint of `fit`), so the training data need
not be there any more:

- a folder: its image files (PNG, JPEG, GIF, WebP), searched recursively, each named by its path inside the folder;
  decoded with the training images' channels (grey or RGB), resized to their height and width when they differ,
  and normalised with their mean and std;
- a file of feature rows, one item per row, for networks trained on inputs that are not images: `.csv` (numbers
  separated by commas, an optional header line), `.npy` (an array of N rows, read without pickle) or `.pt` (a tensor
  saved by `torch.save`, read with weights-only unpickling after checking what its pickle calls). Each row holds as
  many values as a training input; rows are named by their index, 0 to N - 1.

A file that cannot be read, a folder without images and rows of the wrong size are one error naming the file.
"""

from __future__ import annotations

import csv
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data._images import IMAGE_EXTENSIONS, image_files, load_image
from trust import PICKLE_CALLS, pickle_calls, shown
from utils import ConfigError, DataError

ROW_FILES = (".csv", ".npy", ".pt")
MAX_AXES = 8  # the most axes of one input a record may give
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def describe(example: Any, classes: list[str] | None, mean: Any = None, std: Any = None) -> dict[str, Any] | None:
    """What prediction on new data needs to know of the training data, as plain values: the class names, the shape
    and dtype of one input as the network saw it (`example`, resized), and for images their channels, height and
    width and the normalisation constants (`mean`, `std`; None when not normalised). None for inputs that are not
    float tensors, which prediction on new data does not read."""
    if not isinstance(example, torch.Tensor) or example.dtype not in DTYPES.values():
        return None
    record: dict[str, Any] = {
        "classes": list(classes) if classes is not None else None,
        "input_shape": list(example.shape),
        "dtype": str(example.dtype).removeprefix("torch."),
        "image": None,
    }
    if example.dim() == 3:
        numbers = None if mean is None else [[float(v) for v in torch.as_tensor(c).flatten()] for c in (mean, std)]
        record["image"] = {
            "channels": example.shape[0],
            "size": list(example.shape[1:]),
            "mean": numbers[0] if numbers else None,
            "std": numbers[1] if numbers else None,
        }
    return None if _malformed(record) else record


def check_description(record: Any, where: str) -> dict[str, Any]:
    """`record` (from a checkpoint: `where` names it) when it is what `describe` writes; else a ConfigError."""
    if _malformed(record):
        raise ConfigError(
            f"{where}: the record of the training data ({shown(record)}) is not what this template writes; give "
            "another checkpoint"
        )
    return record


def _malformed(record: Any) -> bool:
    if not isinstance(record, dict) or set(record) != {"classes", "input_shape", "dtype", "image"}:
        return True
    classes, shape, dtype, image = (record[key] for key in ("classes", "input_shape", "dtype", "image"))
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return True
    if not (isinstance(shape, list) and 0 < len(shape) <= MAX_AXES and all(_count(s) for s in shape)):
        return True
    if dtype not in DTYPES:
        return True
    if image is None:
        return False
    if not isinstance(image, dict) or set(image) != {"channels", "size", "mean", "std"}:
        return True
    channels, size = image["channels"], image["size"]
    if not _count(channels) or not (isinstance(size, list) and len(size) == 2 and all(map(_count, size))):
        return True
    return any(
        constants is not None
        and not (
            isinstance(constants, list)
            and len(constants) in (1, channels)
            and all(isinstance(v, float) and math.isfinite(v) for v in constants)
        )
        for constants in (image["mean"], image["std"])
    )


def _count(value: Any) -> bool:
    """Whether `value` is a size: an int from 1 to 2**20."""
    return type(value) is int and 1 <= value <= 2**20


def new_inputs(path: str, record: dict[str, Any]) -> Dataset:
    """The items at `path` (a folder of images or a file of rows), prepared as `record` (see `describe`) says."""
    where = Path(path)
    if where.is_dir():
        if record["image"] is None:
            raise ConfigError(
                f"data.predict_path {path} is a folder of images, but the network was trained on inputs of shape "
                f"{record['input_shape']}: give a file of feature rows ({', '.join(ROW_FILES)})"
            )
        if record["image"]["channels"] not in (1, 3):
            raise ConfigError(
                f"data.predict_path {path}: the network was trained on images of {record['image']['channels']} "
                "channels, and image files are read as grey (1) or RGB (3); give a file of rows of its input's shape"
            )
        return NewImages(where, record)
    if not where.is_file():
        raise ConfigError(f"data.predict_path {path}: no such file or folder")
    if record["image"] is not None and record["image"]["channels"] in (1, 3):
        raise ConfigError(
            f"data.predict_path {path} is a file, but the network was trained on images: give a folder of images"
        )
    return FeatureRows(where, record)


class NewImages(Dataset):
    """The image files under `folder` (recursively), each as the network saw the training images; `files` holds
    their paths inside `folder`, which name them in predictions.csv."""

    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        from torchvision.transforms import v2

        image = record["image"]
        self.folder = folder
        found = image_files(folder, "data.predict_path")
        self.files: list[str] = [path.relative_to(folder).as_posix() for path in found]
        if not self.files:
            raise ConfigError(
                f"data.predict_path {folder}: no image files in it or its subfolders ({', '.join(IMAGE_EXTENSIONS)})"
            )
        self.grayscale, self.size = image["channels"] == 1, image["size"]
        self.resize = v2.Resize(self.size, antialias=True)
        self.normalize = None if image["mean"] is None else v2.Normalize(image["mean"], image["std"])
        self.dtype = DTYPES[record["dtype"]]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_image(self.folder / self.files[index], self.grayscale)
        if list(image.shape[1:]) != self.size:
            image = self.resize(image)
        if self.normalize is not None:
            image = self.normalize(image)
        return image.to(self.dtype)


class FeatureRows(Dataset):
    """The rows of a `.csv`, `.npy` or `.pt` file, each one input of the shape the network was trained on."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        shape = record["input_shape"]
        rows = _read_rows(path)
        if rows.dim() == 1 and math.prod(shape) == 1:
            rows = rows[:, None]  # one value per row, given as one column
        if rows.dim() < 1 or len(rows) == 0:
            raise DataError(f"data.predict_path {path} holds no rows; add some")
        if rows.dim() == 1:
            raise DataError(
                f"data.predict_path {path} holds {len(rows)} values in one axis: give one row of {math.prod(shape)} "
                "values per item (a 2-D array)"
            )
        if rows[0].numel() != math.prod(shape):
            raise DataError(
                f"data.predict_path {path}: its rows hold {rows[0].numel()} values ({list(rows.shape[1:])}) but the "
                f"network was trained on inputs of {math.prod(shape)} ({shape}); give rows of that size"
            )
        self.rows = rows.reshape(len(rows), *shape).to(DTYPES[record["dtype"]])
        if not torch.isfinite(self.rows).all():
            row = int((~torch.isfinite(self.rows.flatten(1))).any(dim=1).nonzero()[0])
            raise DataError(f"data.predict_path {path}: row {row} holds nan or inf; give finite numbers")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


def _read_rows(path: Path) -> torch.Tensor:
    """The numbers in a `.csv`, `.npy` or `.pt` file, as a tensor with one row per item."""
    suffix = path.suffix.lower()
    where = f"data.predict_path {path}"
    if suffix not in ROW_FILES:
        raise ConfigError(f"{where}: not a file of rows; give a folder of images or a {', '.join(ROW_FILES)} file")
    try:
        if suffix == ".csv":
            return _csv_rows(path, where)
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                raise DataError(f"{where}: an array of {array.dtype}, not of numbers")
            return torch.from_numpy(array.astype(np.float64 if array.dtype == np.float64 else np.float32))
        return _tensor_file(path, where)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, UnicodeDecodeError) as error:
        # np.load refuses a pickled (object) array with a ValueError: it is read without unpickling.
        reason = " ".join(str(error).split())[:200]
        raise DataError(f"{where}: cannot read it ({type(error).__name__}: {reason})") from error


def _csv_rows(path: Path, where: str) -> torch.Tensor:
    """The rows of a CSV file of numbers; a first line that is not numbers is a header, and skipped."""
    with path.open(newline="", encoding="utf-8") as file:
        lines = [(number, row) for number, row in enumerate(csv.reader(file), start=1) if row]
    if lines and not all(_is_number(cell) for cell in lines[0][1]):
        lines = lines[1:]
    if not lines:
        raise DataError(f"{where} holds no rows; add some")
    width = len(lines[0][1])
    values = []
    for number, row in lines:
        if len(row) != width:
            raise DataError(
                f"{where}: line {number} has {len(row)} values, the first row {width}; give every row as many"
            )
        cell = next((cell for cell in row if not _is_number(cell)), None)
        if cell is not None:
            raise DataError(f"{where}: line {number} holds {shown(cell)}, not a number")
        values.append([float(cell) for cell in row])
    return torch.tensor(values, dtype=torch.float32)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _tensor_file(path: Path, where: str) -> torch.Tensor:
    """The tensor that `torch.save` wrote to `path`, unpickled weights-only once its pickle is seen to build nothing
    but tensors and plain values (trust.py's rule for checkpoints): a file that would run code, or allocate memory from
    a number alone, is refused without being unpickled."""
    refused = f"{where}: refused, it is not a tensor saved by torch.save (its pickle may run code)"
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [archive.read(m) for m in archive.infolist() if m.filename.rsplit("/", 1)[-1] == "data.pkl"]
    except zipfile.BadZipFile as error:
        raise DataError(refused) from error
    if not pickles or any(pickle_calls(data) - PICKLE_CALLS for data in pickles):
        raise DataError(refused)
    try:
        rows = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DataError(refused) from error
    if not isinstance(rows, torch.Tensor) or rows.is_complex() or rows.dim() == 0:
        raise DataError(
            f"{where}: holds {type(rows).__name__}, not a tensor of rows; save one with torch.save(rows, path)"
        )
    return rows.float() if rows.dtype != torch.float64 else rows
