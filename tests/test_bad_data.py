"""Data that is wrong in ways people meet: each is one clear error naming the file or the value, never a traceback,
never a silent fallback or a run that ends "successfully" on a nan loss."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import image_pixels, run_main, write_image_folder, write_json_images
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import write_png

from data._images import load_image
from data.data_interface import DInterface
from data.json_images import JsonImages
from model.model_interface import MInterface
from trust import load_yaml_file
from utils import ConfigError, DataError, construct


def edit_annotations(root: Path, split: str = "train", **changes: object) -> None:
    path = root / "annotations" / f"cifar10_{split}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def write_animated_gif(path: Path, frames: int = 3) -> None:
    images = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")[:frames]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


def serve_all(data: DInterface) -> None:
    """Every batch of every split, as training would ask for them."""
    for split in ("train", "val", "test"):
        list(getattr(data, f"{split}_dataloader")())


def quiet_trainer(**kwargs: object) -> pl.Trainer:
    args = {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return pl.Trainer(**{**args, **kwargs}, enable_model_summary=False, accelerator="cpu")


# ---- A DataError raised in a loader worker ---------------------------------------------------------------------


class Refusing(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        raise DataError(f"cannot decode image /data/{index}.png (bad header); replace it")


def test_a_data_error_from_a_loader_worker_keeps_its_one_line() -> None:
    batches = iter(DataLoader(Refusing(), batch_size=2, num_workers=1))
    try:
        next(batches)
        caught = "nothing"
    except ConfigError as error:  # what main.py prints as "error: ...", exit status 2
        caught = f"{type(error).__name__}: {error}"
        # Its traceback holds the loader in a reference cycle: left to the garbage collector, the worker takes
        # seconds to stop.
        error.__traceback__ = None
    del batches
    assert caught == "DataError: cannot decode image /data/0.png (bad header); replace it"


# ---- Image files ------------------------------------------------------------------------------------------------


def test_an_animated_gif_is_refused_naming_it(tmp_path: Path) -> None:
    write_animated_gif(tmp_path / "moving.gif")
    with pytest.raises(DataError, match=re.escape(f"image {tmp_path / 'moving.gif'} is an animated GIF (3 frames)")):
        load_image(tmp_path / "moving.gif", grayscale=False)


def test_a_still_gif_gives_the_channels_asked_for(tmp_path: Path) -> None:
    write_animated_gif(tmp_path / "still.gif", frames=1)
    assert load_image(tmp_path / "still.gif", grayscale=True).shape == (1, 8, 8)
    assert load_image(tmp_path / "still.gif", grayscale=False).shape == (3, 8, 8)


@pytest.mark.parametrize("in_memory", ["cpu", "off"])
def test_images_of_mixed_sizes_name_two_files_and_the_resize_to_set(tmp_path: Path, in_memory: str) -> None:
    write_image_folder(tmp_path, n_per_class=3)
    odd = tmp_path / "train" / "dog" / "01.png"
    write_png(image_pixels(7, size=12)[:, :10], str(odd))
    data = DInterface(dataset="image_folder", dataset_args={"root": str(tmp_path)}, in_memory=in_memory, num_workers=0)
    data.setup("fit")
    first = tmp_path / "train" / "cat" / "00.png"
    message = f"images of different sizes: {odd} is 10x12 but {first} is 8x8"
    with pytest.raises(DataError, match=re.escape(message) + r".*set --data\.resize \[8, 8\] \(height, width\)$"):
        serve_all(data)


def test_a_resize_of_the_shorter_side_alone_is_named_when_shapes_still_differ(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_per_class=3)
    write_png(image_pixels(7, size=12)[:, :6], str(tmp_path / "train" / "dog" / "01.png"))
    data = DInterface(dataset="image_folder", dataset_args={"root": str(tmp_path)}, resize=[4], in_memory="cpu")
    data.setup("fit")
    with pytest.raises(DataError, match=r"is 4x8 but .* is 4x4 after data.resize \[4\], which sets the shorter side"):
        serve_all(data)


def test_images_with_different_channel_counts_are_named() -> None:
    class Mixed(Dataset):  # a user's dataset: the last of its images is grey
        files = ["a.png", "b.png", "c.png", "d.png"]
        classes = ["x", "y"]

        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return torch.zeros(1 if index == 3 else 3, 4, 4), index % 2

    data = DInterface(dataset="synthetic", val_fraction=0.25, test_fraction=0.25, in_memory="off", num_workers=0)
    data.dataset_class = Mixed
    data.setup("fit")
    with pytest.raises(DataError, match=r"^image d.png has 1 channels but a.png has 3: give the images one number of"):
        serve_all(data)


# ---- Annotations -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "/etc/outside.png"])
def test_an_annotation_path_outside_the_image_folder_is_refused(tmp_path: Path, name: str) -> None:
    write_json_images(tmp_path)
    (tmp_path / "outside.png").write_bytes((tmp_path / "train_cifar10" / "0000.png").read_bytes())
    edit_annotations(tmp_path, images=["0000.png", name, "0002.png", "0003.png", "0004.png", "0005.png"])
    with pytest.raises(ConfigError, match=re.escape(f"image {name!r} lies outside the image folder")):
        JsonImages(str(tmp_path))


def test_a_file_listed_twice_with_two_labels_is_refused_with_one_label_kept(tmp_path: Path) -> None:
    write_json_images(tmp_path)  # labels 0, 1, 2, 0, 1, 2
    images = ["0000.png", "0001.png", "0002.png", "0003.png", "0004.png", "./0001.png"]
    edit_annotations(tmp_path, images=images)
    with pytest.raises(ConfigError, match=r"lists image './0001.png' twice, with labels 1 and 2"):
        JsonImages(str(tmp_path))
    edit_annotations(tmp_path, images=images, categories=[0, 1, 2, 0, 1, 1])
    assert [label for _, label in JsonImages(str(tmp_path))] == [0, 1, 2, 0, 1, 1]  # oversampling: kept


# ---- Classes -----------------------------------------------------------------------------------------------------


def test_a_dataset_with_a_single_class_is_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "folder", classes=("cat",), n_per_class=5)
    data = DInterface(dataset="image_folder", dataset_args={"root": str(tmp_path / "folder")})
    with pytest.raises(DataError, match=r"dataset 'image_folder' has a single class \('cat'\)"):
        data.setup("fit")
    write_json_images(tmp_path / "json", n_classes=1, n_per_class=5)
    data = DInterface(dataset="json_images", dataset_args={"root": str(tmp_path / "json")})
    with pytest.raises(DataError, match=r"dataset 'json_images' has a single class \('0'\)"):
        data.setup("fit")


def test_a_training_split_of_one_class_is_refused(tmp_path: Path) -> None:
    write_json_images(tmp_path, classes=["cat", "dog", "frog"], n_per_class=3)
    edit_annotations(tmp_path, categories=[1] * 9)
    data = DInterface(dataset="json_images", dataset_args={"root": str(tmp_path)})
    with pytest.raises(DataError, match=r"the training split of dataset 'json_images' holds class 'dog' alone"):
        data.setup("fit")


# ---- Constructor arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "args", "message"),
    [
        ("line", {"step": -1.0}, r"dataset 'line' refused --data.dataset_args.step -1.0: line: need step > 0 "),
        ("synthetic", {"num_classes": 1}, r"dataset 'synthetic' refused --data.dataset_args.num_classes 1: "),
    ],
)
def test_a_dataset_refusing_its_arguments_is_one_line_naming_them(dataset: str, args: dict, message: str) -> None:
    data = DInterface(dataset=dataset, dataset_args=args)
    with pytest.raises(ConfigError, match=message + rf".*\(data/{dataset}\.py:\d+\)$") as caught:
        data.setup("fit")
    assert "\n" not in str(caught.value)


class Tutorial(Dataset):
    def __init__(self, size: int = 4, mode: str = "a") -> None:
        assert size > 0
        if mode not in ("a", "b"):
            raise ValueError(f"unknown mode {mode}")
        if size > 100:
            raise ConfigError("size: at most 100")
        self.size = size


def test_errors_of_a_users_constructor_become_one_line() -> None:
    def build(**args: object) -> object:
        return construct(Tutorial, "dataset 'tutorial'", "data.dataset_args", args)

    # A bare assert's source line, which pytest rewrites in this file to show the values.
    bare_assert = r"^dataset 'tutorial' refused --data.dataset_args.size -1: assert (size|-1) > 0 \(tests/test_bad_data"
    with pytest.raises(ConfigError, match=bare_assert):
        build(size=-1)
    with pytest.raises(ConfigError, match=r"refused --data.dataset_args.mode c: unknown mode c \(.*test_bad_data.py:"):
        build(mode="c", size=4)  # the default size is not named
    with pytest.raises(ConfigError, match="^size: at most 100$"):  # the dataset's own ConfigError, as it is
        build(size=101)
    with pytest.raises(ConfigError, match=r"^dataset 'tutorial' refused --data.dataset_args.colour red: .*colour"):
        build(colour="red")
    assert build(size=3).size == 3


def test_a_network_refusing_its_arguments_is_one_line_naming_them() -> None:
    class Net(torch.nn.Module):
        def __init__(self, width: int = 2) -> None:
            super().__init__()
            if width < 1:
                raise ValueError(f"width must be >= 1, got {width}")

    model = MInterface(net="linear")
    model.net_class = Net
    with pytest.raises(ConfigError, match=r"^model 'linear' refused --model.net_args.width 0: width must be >= 1"):
        model._build_net({"width": 0})


@pytest.mark.parametrize(
    ("loss", "args", "message"),
    [
        ("L1Loss", {"reduction": "foo"}, "loss L1Loss(reduction='foo') fails: foo is not a valid value for reduction"),
        ("MSELoss", {"reduction": "none"}, "loss MSELoss(reduction='none') gives a loss per item, not one per batch"),
        ("CrossEntropyLoss", {"label_smoothing": 2}, "label_smoothing must be between 0.0 and 1.0. Got: 2; fix"),
        ("HuberLoss", {"delta": -1}, "loss HuberLoss(delta=-1) fails: huber_loss does not support non-positive"),
        ("L1Loss", {"size": 3}, "unexpected keyword argument 'size'; fix model.loss_args"),
        ("TripletMarginLoss", {}, "loss TripletMarginLoss() fails: "),
    ],
)
def test_wrong_loss_arguments_are_refused_before_training(loss: str, args: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        MInterface(loss=loss, loss_args=args)


def test_right_loss_arguments_are_taken() -> None:
    assert MInterface(loss="HuberLoss", loss_args={"delta": 0.5}).loss_fn.delta == 0.5
    classifier = MInterface(net="mlp", loss="CrossEntropyLoss", loss_args={"label_smoothing": 0.1})
    assert classifier.loss_fn.label_smoothing == 0.1 and classifier.classification


# ---- nan and inf in validation and test ---------------------------------------------------------------------------


def line_data() -> DInterface:
    data = DInterface(dataset="line")
    data.setup("fit")
    return data


@pytest.mark.parametrize("sanity_steps", [0, 2])
def test_nan_in_the_validation_data_stops_fitting_naming_the_split_and_the_step(sanity_steps: int) -> None:
    data = line_data()
    data.dataset.x[data.val_set.indices[3]] = torch.nan
    when = r"at step 1 \(epoch 0\)" if sanity_steps == 0 else "in the sanity check before training"
    message = rf"^the validation loss is nan {when} \(1 of 1 batches\): the validation data holds nan or inf values"
    with pytest.raises(DataError, match=message + " in its inputs; fix or drop them$"):
        quiet_trainer(num_sanity_val_steps=sanity_steps, max_epochs=3).fit(MInterface(), data)


def test_nan_in_the_test_targets_is_named() -> None:
    data = line_data()
    data.test_set.y[1] = torch.inf
    with pytest.raises(DataError, match=r"^the test loss is inf when testing .* nan or inf values in its targets"):
        quiet_trainer().test(MInterface(), data)


def test_an_inf_validation_loss_on_finite_data_is_an_error_too() -> None:
    data = line_data()
    data.dataset.x[data.val_set.indices[0]] = 1e30  # finite, but not once squared
    message = r"the validation loss is inf at step 1 .*, though its data is finite"
    with pytest.raises(ConfigError, match=message) as caught:
        quiet_trainer(num_sanity_val_steps=0).fit(MInterface(loss="MSELoss"), data)
    assert not isinstance(caught.value, DataError)


def test_finite_validation_data_trains_as_before() -> None:
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(MInterface(lr=0.1), line_data())
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


# ---- Config files ------------------------------------------------------------------------------------------------


def test_a_binary_file_is_no_yaml_config(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04\x14\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"model.ckpt is not YAML text: its byte 6 \(0xff\) is not UTF-8 text"):
        load_yaml_file(tmp_path / "model.ckpt")
    (tmp_path / "zeros.yaml").write_bytes(b"model:\n  lr: 0.1\x00\x00")
    with pytest.raises(ConfigError, match=r"zeros.yaml is not YAML text: it holds the control character #x00 at"):
        load_yaml_file(tmp_path / "zeros.yaml")


# ---- The command line --------------------------------------------------------------------------------------------


def last_error(run: object) -> str:
    """The command's last line on stderr, which must be its one error line, with no traceback before it."""
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Caught" not in run.stderr, run.stderr[-3000:]
    return run.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--model", "mlp", "--data.dataset_args.num_classes", "1"), "dataset 'synthetic' refused --data.dataset_args"),
        (("--model", "linear", "--data.dataset_args.step", "-1"), "dataset 'line' refused --data.dataset_args.step"),
        (("--model", "linear", "--model.loss_args", "{reduction: foo}"), "loss L1Loss(reduction='foo') fails"),
        (("--config", "model.ckpt"), "model.ckpt is not YAML text"),
        (("--model", "linear", "--data.dataset_args", "model.ckpt"), "--data.dataset_args model.ckpt is not YAML text"),
    ],
)
def test_wrong_values_end_in_one_line(tmp_path: Path, args: tuple[str, ...], error: str) -> None:
    (tmp_path / "model.ckpt").write_bytes(bytes(range(256)))
    assert last_error(run_main(*args, cwd=tmp_path)).startswith(f"error: {error}")


@pytest.mark.slow
def test_a_corrupt_image_met_in_a_loader_worker_is_one_line_naming_it(tmp_path: Path) -> None:
    write_json_images(tmp_path / "data", n_per_class=4)
    corrupt = tmp_path / "data" / "train_cifar10" / "0005.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    run = run_main(
        "--model", "cnn", "--model.net_args.channels", "[4]", "--data", "json_images", "--data.root",
        str(tmp_path / "data"), "--trainer.max_epochs", "1", "--data.in_memory", "off", "--data.num_workers", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert last_error(run).startswith(f"error: cannot decode image {corrupt} (")


@pytest.mark.slow
def test_mixed_image_sizes_on_the_command_line_say_to_set_resize(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data", n_per_class=4)
    write_png(image_pixels(3, size=10), str(tmp_path / "data" / "train" / "dog" / "00.png"))
    run = run_main(
        "--model", "cnn", "--model.net_args.channels", "[4]", "--data", "image_folder", "--data.root",
        str(tmp_path / "data"), "--trainer.max_epochs", "1", cwd=tmp_path,
    )  # fmt: skip
    assert re.fullmatch(r"error: images of different sizes: .*/dog/00.png is 10x10 but .* is 8x8 .*", last_error(run))
    assert not (tmp_path / "runs" / "cnn" / "version_0" / "checkpoints").exists()  # stopped before training


@pytest.mark.slow
def test_nan_in_the_validation_data_is_an_error_not_an_early_stop(project_copy: Path, tmp_path: Path) -> None:
    (project_copy / "data" / "holey.py").write_text(
        "import torch\n"
        "from torch.utils.data import Dataset, random_split\n\n\n"
        "class Holey(Dataset):  # a line with a nan in the validation split that DInterface carves\n"
        "    def __init__(self) -> None:\n"
        "        self.x = torch.linspace(0, 1, 50).unsqueeze(1)\n"
        "        self.y = 0.7 * self.x + 0.3\n"
        "        split = random_split(range(50), [1 - 0.2 - 0.2, 0.2, 0.2], torch.Generator().manual_seed(42))\n"
        "        self.x[split[1].indices[0]] = float('nan')\n\n"
        "    def __len__(self) -> int:\n"
        "        return len(self.x)\n\n"
        "    def __getitem__(self, index: int) -> tuple:\n"
        "        return self.x[index], self.y[index]\n"
    )
    args = ("--model.net=linear", "--data=holey", "--trainer.max_epochs=3", "--trainer.num_sanity_val_steps=0")
    run = run_main(*args, cwd=tmp_path, root=project_copy)
    assert last_error(run).endswith(
        "error: the validation loss is nan at step 1 (epoch 0) (1 of 1 batches): the validation data holds nan or inf "
        "values in its inputs; fix or drop them"
    )
    assert "best val/loss" not in run.stdout
