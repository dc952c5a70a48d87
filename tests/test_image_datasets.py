"""data/json_images.py and data/image_folder.py on tiny PNG folders written here, errors included."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Split, image_pixels, run_main, write_image_folder, write_json_images
from torchvision.io import write_jpeg, write_png

from data.data_interface import DInterface, item_ids
from data.image_folder import ImageFolder
from data.json_images import JsonImages
from utils import ConfigError


def edit_json(path: Path, **changes: Any) -> None:
    """Set (or, with the value `...`, delete) keys of the JSON object in `path`."""
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def named(path: Path) -> str:
    """A `match` pattern for an error message that names `path`."""
    return re.escape(str(path))


def assert_images(dataset: torch.utils.data.Dataset, expected: Split) -> None:
    """`dataset` serves exactly `expected`: float32 images equal to the written pixels / 255, int labels."""
    images, labels = expected
    assert len(dataset) == len(images)
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        image, got = dataset[index]
        assert image.dtype == torch.float32 and image.shape == pixels.shape
        assert 0 <= image.min() and image.max() <= 1
        torch.testing.assert_close(image, pixels.float() / 255, rtol=0, atol=0)
        assert type(got) is int and got == label


# ---- JsonImages -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_json_images_reads_each_split(tmp_path: Path, train: bool) -> None:
    written = write_json_images(tmp_path, n_per_class=2, n_classes=3)
    dataset = JsonImages(str(tmp_path), train=train)
    assert dataset.classes == ["0", "1", "2"]
    assert not hasattr(dataset, "mean") and not hasattr(dataset, "std")
    assert_images(dataset, written["train" if train else "test"])


def test_json_images_class_names_from_the_json(tmp_path: Path) -> None:
    written = write_json_images(tmp_path, classes=["plane", "car", "bird", "cat"], n_per_class=1)
    assert JsonImages(str(tmp_path)).classes == ["plane", "car", "bird", "cat"]
    assert JsonImages(str(tmp_path), train=False).classes == ["plane", "car", "bird", "cat"]
    assert [label for _, label in JsonImages(str(tmp_path))] == written["train"][1] == [0, 1, 2, 3]


def test_json_images_test_classes_come_from_train_labels(tmp_path: Path) -> None:
    """Without names, the class count is max(train label) + 1, even for a test split with fewer labels."""
    write_json_images(tmp_path, n_per_class=1, n_classes=4)
    edit_json(tmp_path / "annotations" / "cifar10_test.json", images=["0000.png"], categories=[0])
    test = JsonImages(str(tmp_path), train=False)
    assert len(test) == 1 and test.classes == ["0", "1", "2", "3"]


def test_json_images_train_classes_win_over_a_test_file_without_them(tmp_path: Path) -> None:
    write_json_images(tmp_path, classes=["a", "b"])
    edit_json(tmp_path / "annotations" / "cifar10_test.json", classes=...)
    assert JsonImages(str(tmp_path), train=False).classes == ["a", "b"]


def test_json_images_name_parameter(tmp_path: Path) -> None:
    written = write_json_images(tmp_path, name="mnist", n_per_class=1, n_classes=2, channels=1)
    assert_images(JsonImages(str(tmp_path), name="mnist", grayscale=True), written["train"])
    with pytest.raises(ConfigError, match=named(tmp_path / "annotations" / "cifar10_train.json")):
        JsonImages(str(tmp_path))


def test_json_images_rgb_or_grayscale(tmp_path: Path) -> None:
    write_json_images(tmp_path)
    assert JsonImages(str(tmp_path))[0][0].shape == (3, 8, 8)
    gray, _ = JsonImages(str(tmp_path), grayscale=True)[0]
    assert gray.shape == (1, 8, 8) and gray.dtype == torch.float32
    assert 0 <= gray.min() and gray.max() <= 1


def test_json_images_sixteen_bit_png_is_scaled_to_one(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    write_json_images(tmp_path, n_per_class=1, n_classes=1)
    values = torch.tensor([[0, 1000], [40000, 65535]], dtype=torch.int32)
    image_module.fromarray(values.numpy().astype("uint16")).save(tmp_path / "train_cifar10" / "0000.png")
    gray, _ = JsonImages(str(tmp_path), grayscale=True)[0]
    torch.testing.assert_close(gray, values.float().unsqueeze(0) / 65535)


def test_json_images_root_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data root .*nowhere does not exist: set --data\.root"):
        JsonImages(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_json_images_annotation_file_missing(tmp_path: Path, split: str) -> None:
    write_json_images(tmp_path)
    path = tmp_path / "annotations" / f"cifar10_{split}.json"
    path.unlink()
    with pytest.raises(ConfigError, match=f"annotation file {named(path)} not found"):
        JsonImages(str(tmp_path), train=False)


@pytest.mark.parametrize("text", ['{"images": [', "", "\xff"])
def test_json_images_invalid_json(tmp_path: Path, text: str) -> None:
    write_json_images(tmp_path)
    path = tmp_path / "annotations" / "cifar10_train.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{named(path)} is not valid JSON"):
        JsonImages(str(tmp_path))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"images": ...}, "'images' is missing or not a list"),
        ({"categories": ...}, "'categories' is missing or not a list"),
        ({"images": "0000.png"}, "'images' is missing or not a list"),
        ({"categories": {"0000.png": 0}}, "'categories' is missing or not a list"),
        ({"categories": [0, 1, 2, 0, 1]}, "lists 6 images but 5 categories"),
        ({"images": [], "categories": []}, "lists no images"),
        ({"images": [0, 1, 2, 3, 4, 5]}, "image 0 is not a file name"),
        ({"classes": "abc"}, "'classes' must be a non-empty list of distinct names"),
        ({"classes": []}, "'classes' must be a non-empty list of distinct names"),
        ({"classes": [0, 1, 2]}, "'classes' must be a non-empty list of distinct names"),
        ({"classes": ["a", "a", "b"]}, "'classes' must be a non-empty list of distinct names"),
    ],
)
def test_json_images_malformed_annotations(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    write_json_images(tmp_path)
    path = tmp_path / "annotations" / "cifar10_train.json"
    edit_json(path, **changes)
    with pytest.raises(ConfigError, match=f"{named(path)}.*{re.escape(message)}"):
        JsonImages(str(tmp_path))


def test_json_images_annotations_not_an_object(tmp_path: Path) -> None:
    write_json_images(tmp_path)
    path = tmp_path / "annotations" / "cifar10_train.json"
    path.write_text('["0000.png"]')
    with pytest.raises(ConfigError, match=f"{named(path)}: it must be an object"):
        JsonImages(str(tmp_path))


@pytest.mark.parametrize("label", ["1", 1.0, True, None, -1])
def test_json_images_label_not_a_non_negative_int(tmp_path: Path, label: Any) -> None:
    write_json_images(tmp_path)
    path = tmp_path / "annotations" / "cifar10_train.json"
    edit_json(path, categories=[0, 1, 2, label, 1, 2])
    pattern = f"{named(path)}: image '0003.png' has label {re.escape(repr(label))}; labels must be integers >= 0"
    with pytest.raises(ConfigError, match=pattern):
        JsonImages(str(tmp_path))


def test_json_images_label_beyond_the_named_classes(tmp_path: Path) -> None:
    write_json_images(tmp_path, classes=["a", "b", "c"])
    path = tmp_path / "annotations" / "cifar10_train.json"
    edit_json(path, categories=[0, 1, 2, 3, 1, 2])
    with pytest.raises(ConfigError, match=f"{named(path)}: image '0003.png' has label 3, but there are 3 classes"):
        JsonImages(str(tmp_path))


def test_json_images_test_label_beyond_the_train_labels(tmp_path: Path) -> None:
    write_json_images(tmp_path)
    path = tmp_path / "annotations" / "cifar10_test.json"
    edit_json(path, categories=[0, 1, 2, 0, 1, 5])
    with pytest.raises(ConfigError, match=f"{named(path)}: image '0005.png' has label 5, but there are 3 classes"):
        JsonImages(str(tmp_path), train=False)


@pytest.mark.parametrize("test_classes", [["a", "c", "b"], ["a", "b"]])
def test_json_images_test_classes_differ(tmp_path: Path, test_classes: list[str]) -> None:
    write_json_images(tmp_path, classes=["a", "b", "c"])
    path = tmp_path / "annotations" / "cifar10_test.json"
    edit_json(path, classes=test_classes)
    with pytest.raises(ConfigError, match=f"'classes' of {named(path)} differ"):
        JsonImages(str(tmp_path), train=False)


def test_json_images_test_classes_without_train_classes(tmp_path: Path) -> None:
    write_json_images(tmp_path)
    edit_json(tmp_path / "annotations" / "cifar10_test.json", classes=["a", "b", "c"])
    with pytest.raises(ConfigError, match="differ"):
        JsonImages(str(tmp_path), train=False)


@pytest.mark.parametrize("train", [True, False])
def test_json_images_image_folder_missing(tmp_path: Path, train: bool) -> None:
    write_json_images(tmp_path)
    folder = tmp_path / ("train_cifar10" if train else "test_cifar10")
    shutil.rmtree(folder)
    with pytest.raises(ConfigError, match=f"image folder {named(folder)} not found"):
        JsonImages(str(tmp_path), train=train)


def test_json_images_image_files_missing(tmp_path: Path) -> None:
    write_json_images(tmp_path)
    for file in ("0002.png", "0004.png"):
        (tmp_path / "train_cifar10" / file).unlink()
    pattern = f"2 of the 6 images .* the first being {named(tmp_path / 'train_cifar10' / '0002.png')}"
    with pytest.raises(ConfigError, match=pattern):
        JsonImages(str(tmp_path))


@pytest.mark.parametrize("content", [b"not a png", b"", "png-prefix"])
def test_json_images_corrupt_file_fails_when_loaded(tmp_path: Path, content: bytes | str) -> None:
    write_json_images(tmp_path)
    path = tmp_path / "train_cifar10" / "0001.png"
    if content == "png-prefix":  # a truncated PNG: its first bytes only
        content = path.read_bytes()[:40]
    path.write_bytes(content)
    dataset = JsonImages(str(tmp_path))
    assert dataset[0][0].shape == (3, 8, 8)
    with pytest.raises(ConfigError, match=f"cannot decode image {named(path)}") as caught:
        dataset[1]
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert ".cpp" not in str(caught.value)


# ---- ImageFolder ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_image_folder_reads_each_split(tmp_path: Path, train: bool) -> None:
    written = write_image_folder(tmp_path, classes=("frog", "cat", "dog"))
    dataset = ImageFolder(str(tmp_path), train=train)
    assert dataset.classes == ["cat", "dog", "frog"]
    assert not hasattr(dataset, "mean") and not hasattr(dataset, "std")
    assert_images(dataset, written["train" if train else "test"])


def test_image_folder_grayscale(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path, channels=1)
    assert_images(ImageFolder(str(tmp_path), grayscale=True), written["train"])
    rgb, _ = ImageFolder(str(tmp_path))[0]
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])


def test_image_folder_test_may_lack_a_class(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    shutil.rmtree(tmp_path / "test" / "cat")
    test = ImageFolder(str(tmp_path), train=False)
    assert test.classes == ["cat", "dog", "frog"]
    assert [label for _, label in test] == [1, 1, 2, 2]


def test_image_folder_other_formats_nested_folders_and_hidden_files(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_per_class=1)
    cat = tmp_path / "train" / "cat"
    write_jpeg(image_pixels(7), str(cat / "b.JPG"))
    (cat / "c").mkdir()
    write_png(image_pixels(8), str(cat / "c" / "d.png"))
    (cat / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / ".ipynb_checkpoints" / "notes.txt").write_text("junk")
    dataset = ImageFolder(str(tmp_path))
    assert dataset.classes == ["cat", "dog", "frog"]
    assert [path.relative_to(cat).as_posix() for path in dataset.files[:3]] == ["00.png", "b.JPG", "c/d.png"]
    assert dataset.labels == [0, 0, 0, 1, 2]
    assert dataset[1][0].shape == (3, 8, 8)


def test_image_folder_root_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data root .*nowhere does not exist: set --data\.root"):
        ImageFolder(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(("removed", "train"), [("train", True), ("train", False), ("test", False)])
def test_image_folder_split_folder_missing(tmp_path: Path, removed: str, train: bool) -> None:
    write_image_folder(tmp_path)
    shutil.rmtree(tmp_path / removed)
    with pytest.raises(ConfigError, match=f"folder {named(tmp_path / removed)} not found"):
        ImageFolder(str(tmp_path), train=train)


def test_image_folder_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / ".hidden").mkdir()
    with pytest.raises(ConfigError, match=f"{named(tmp_path / 'train')} has no class folders"):
        ImageFolder(str(tmp_path))


def test_image_folder_file_beside_the_class_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    write_png(image_pixels(0), str(tmp_path / "train" / "stray.png"))
    with pytest.raises(ConfigError, match=f"{named(tmp_path / 'train' / 'stray.png')} is a file"):
        ImageFolder(str(tmp_path))


@pytest.mark.parametrize("train", [True, False])
def test_image_folder_class_without_images(tmp_path: Path, train: bool) -> None:
    write_image_folder(tmp_path)
    split = "train" if train else "test"
    empty = tmp_path / split / "dog"
    shutil.rmtree(empty)
    (empty / "sub").mkdir(parents=True)
    (empty / ".keep").write_text("")
    with pytest.raises(ConfigError, match=f"class folder {named(empty)} has no images"):
        ImageFolder(str(tmp_path), train=train)


@pytest.mark.parametrize("file", ["labels.txt", "photo.bmp", "README"])
def test_image_folder_unknown_file(tmp_path: Path, file: str) -> None:
    write_image_folder(tmp_path)
    path = tmp_path / "train" / "dog" / file
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"{named(path)} is not an image file"):
        ImageFolder(str(tmp_path))


def test_image_folder_test_class_not_in_train(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "test" / "bird").mkdir()
    write_png(image_pixels(0), str(tmp_path / "test" / "bird" / "0.png"))
    with pytest.raises(ConfigError, match=f"{named(tmp_path / 'test' / 'bird')} is a class that"):
        ImageFolder(str(tmp_path), train=False)


def test_image_folder_corrupt_file_fails_when_loaded(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    path = tmp_path / "train" / "dog" / "00.png"
    path.write_bytes(path.read_bytes()[:40])
    dataset = ImageFolder(str(tmp_path))
    index = dataset.files.index(path)
    with pytest.raises(ConfigError, match=f"cannot decode image {named(path)}"):
        dataset[index]


# ---- Prediction ids ---------------------------------------------------------------------------------------------


def test_json_images_predictions_are_identified_by_their_file_names(tmp_path: Path) -> None:
    write_json_images(tmp_path)
    data = DInterface(dataset="json_images", dataset_args={"root": str(tmp_path)})
    data.setup("predict")
    assert item_ids(data.predict_set) == [f"{i:04d}.png" for i in range(6)]  # the test JSON's list, in its order


@pytest.mark.slow
def test_predict_writes_the_image_file_of_each_row_as_its_id(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    run = run_main(
        "predict", "--model.net=cnn", "--model.loss=CrossEntropyLoss", "--model.net_args.channels=[4]",
        "--data=image_folder", f"--data.root={tmp_path / 'images'}", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader((run.run_dir / "predictions.csv").open()))
    classes = ("cat", "dog", "frog")
    files = [tmp_path / "images" / "test" / name / f"0{i}.png" for name in classes for i in (0, 1)]
    assert [row["id"] for row in rows] == [str(file) for file in files]  # the whole test split, in its order
    assert {row["class"] for row in rows} <= set(classes)
