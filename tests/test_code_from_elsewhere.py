"""Models and datasets written as tutorials and other projects write them, added to the template unchanged: a net that
returns log-probabilities, a tuple or a dict; datasets whose items are dicts, without a `classes` attribute; a
torchvision-style dataset that opens its images with PIL and applies the `transform` it is given.

The classes below are the user's code. The end-to-end tests copy their source into a copy of the project, each as a
file of its own in model/ or data/, and run main.py on them as a user would."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import os
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import patterned_images, run_main, write_mnist
from PIL import Image
from torch.utils.data import Dataset

import data.data_interface as data_interface
from data._torchvision_style import to_tensor
from data.data_interface import DInterface
from data_contract import check_task, classes_from_targets, log_probabilities, loss_for
from outputs_and_items import ItemPairs, item_keys, prediction
from utils import ConfigError, DataError

# --- the user's code ---------------------------------------------------------------------------------------------


class Net(nn.Module):
    """pytorch/examples' MNIST net: it returns log-probabilities."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


class FeatureNet(nn.Module):
    """Returns its logits and the features they come from, as nets for metric learning or distillation do."""

    def __init__(self, input_size=20, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_size, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        features = self.body(x)
        return self.head(features), features


class DictNet(nn.Module):
    """Returns a dict, as Hugging Face-style models do."""

    def __init__(self, input_size=20, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_size, 32), nn.ReLU())
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        hidden = self.body(x)
        return {"logits": self.classifier(hidden), "hidden_states": hidden}


class KeylessNet(nn.Module):
    """Returns a dict whose keys say nothing of which value is the prediction."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        return {"scores": self.fc(x), "embedding": x}


class SmallNet(nn.Module):
    """A tutorial's net for 8 x 8 grey images of 3 classes, its sizes written in."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def stripes(n):
    """n 1 x 8 x 8 images of three classes (horizontal stripes, vertical stripes, a flat grey) and their labels."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.arange(8).remainder(2).float()
    patterns = torch.stack([rows[:, None].expand(8, 8), rows[None, :].expand(8, 8), torch.full((8, 8), 0.5)])
    labels = [i % 3 for i in range(n)]
    images = patterns[labels].unsqueeze(1) + 0.1 * torch.randn(n, 1, 8, 8, generator=generator)
    return images, labels


class StripesDict(Dataset):
    """Items as dicts, as Hugging Face datasets give them; a `targets` list, no `classes`."""

    def __init__(self, n=120):
        self.images, self.targets = stripes(n)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, idx):
        return {"image": self.images[idx], "label": self.targets[idx]}


class StripesPlain(Dataset):
    """(image, label) items with integer labels, and nothing else: no `classes`, no `targets`."""

    def __init__(self, n=120):
        self.images, self.labels_list = stripes(n)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx], self.labels_list[idx]


class StripesOddKeys(Dataset):
    """Dict items whose keys are not among the common names."""

    def __init__(self, n=120):
        self.images, self.labels_list = stripes(n)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return {"pixels": self.images[idx], "category": self.labels_list[idx]}


class TutorialImages(Dataset):
    """Images listed in a JSON file and opened with PIL, as the tutorials write it: `transform` and `target_transform`
    arguments, no `classes`, no `targets`."""

    def __init__(self, root, train=True, transform=None, target_transform=None):
        split = "train" if train else "test"
        with open(os.path.join(root, f"{split}.json")) as f:
            self.annotations = json.load(f)
        self.root = root
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self):
        return len(self.annotations)

    def __getitem__(self, idx):
        entry = self.annotations[idx]
        img = Image.open(os.path.join(self.root, entry["file"])).convert("L")
        label = entry["label"]
        if self.transform:
            img = self.transform(img)
        if self.target_transform:
            label = self.target_transform(label)
        return img, label


HEADER = (
    "import json\nimport os\n\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
    "from PIL import Image\nfrom torch.utils.data import Dataset\n\n"
)


def write_tutorial_images(root: Path, n_train: int = 60, n_test: int = 15, size: int = 16) -> list[list[int]]:
    """`root/{train,test}.json` ({"file", "label"} per image) and the grey PNGs they list, of three learnable
    patterns (see conftest.patterned_images). Returns each split's labels."""
    labels = []
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        (root / split).mkdir(parents=True)
        images, split_labels = patterned_images(n, size=size, seed=seed)
        entries = []
        for i, (image, label) in enumerate(zip(images, split_labels.tolist(), strict=True)):
            Image.fromarray(image[0].numpy()).save(root / split / f"{i:03d}.png")
            entries.append({"file": f"{split}/{i:03d}.png", "label": label})
        (root / f"{split}.json").write_text(json.dumps(entries))
        labels.append(split_labels.tolist())
    return labels


def add_file(project: Path, folder: str, name: str, *code: object) -> None:
    """Write the source of `code` (classes and functions of this file) into `project/folder/name.py`, the first
    class being the model or dataset the template uses."""
    sources = [inspect.getsource(part) for part in code]
    (project / folder / f"{name}.py").write_text(f'"""{code[0].__doc__}"""\n\n{HEADER}' + "\n\n".join(sources))


# --- the rules ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Output:
    loss: torch.Tensor
    logits: torch.Tensor


def test_the_prediction_is_the_tensor_the_first_element_or_the_known_key() -> None:
    logits, other = torch.randn(4, 3), torch.randn(4, 5)
    Named = namedtuple("Named", ["aux", "logits"])
    for output in (
        logits,
        (logits, other),
        [logits, other],
        ((logits, other), other),
        {"features": other, "logits": logits},
        OrderedDict(hidden=other, out=logits),
        {"y_hat": logits},
        Output(loss=other, logits=logits),
        Named(other, logits),  # a named tuple by its field's name, not its first element
    ):
        assert prediction(output, "net") is logits


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"scores": torch.ones(1), "embedding": torch.ones(1)}, "model 'net' returns a dict with the keys 'scores', "),
        ("text", "model 'net' returns a str, not a tensor"),
        ((), "model 'net' returns an empty tuple, not a tensor"),
    ],
)
def test_an_output_the_rule_cannot_read_names_the_model_and_what_it_returned(output: object, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        prediction(output, "net")


def test_dict_items_give_their_input_and_target_by_name_or_by_the_keys_set() -> None:
    item = {"image": torch.zeros(2), "label": 1, "id": "a.png"}
    assert item_keys(item, "d", None, None) == ("image", "label")
    assert item_keys({"pixels": 0, "category": 1}, "d", "pixels", "category") == ("pixels", "category")
    assert item_keys((torch.zeros(2), 1), "d", None, None) is None  # a pair needs nothing done
    assert item_keys((torch.zeros(2), 1, "meta"), "d", None, None) == (0, 1)
    pairs = ItemPairs(StripesDict(6), ("image", "label"))
    assert pairs[4][1] == 1 and torch.equal(pairs[4][0], pairs.images[4]) and pairs.targets == StripesDict(6).targets
    with pytest.raises(DataError, match="^the items of 'd' are dicts with the keys 'pixels', 'category', none of w"):
        item_keys({"pixels": 0, "category": 1}, "d", None, None)
    with pytest.raises(DataError, match="none of which is known as the target: set --data.target_key"):
        item_keys({"image": 0, "category": 1}, "d", None, None)
    with pytest.raises(ConfigError, match="^data.input_key 'img' is not a key of the items of 'd' "):
        item_keys(item, "d", "img", None)
    with pytest.raises(ConfigError, match="are for items that are dicts; those of 'd' are tuples"):
        item_keys((0, 1), "d", "image", None)
    with pytest.raises(DataError, match="^the items of 'd' are Tensors: an item must be"):
        item_keys(torch.zeros(3), "d", None, None)


def test_integer_targets_make_classes_from_an_attribute_or_one_pass(capsys: pytest.CaptureFixture) -> None:
    classes, labels = classes_from_targets(StripesDict(6), "dicts")  # read through ItemPairs in the data module
    assert classes == ["0", "1", "2"] and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert "Dataset 'dicts' has no `classes`: 3 classes (labels 0 to 2) from its `targets`" in capsys.readouterr().out
    classes, labels = classes_from_targets(StripesPlain(5), "plain")
    assert classes == ["0", "1", "2"] and labels.tolist() == [0, 1, 2, 0, 1]
    assert "3 classes (labels 0 to 2) read from its 5 items (a `targets` list skips this)" in capsys.readouterr().out
    assert classes_from_targets([(torch.zeros(1), 0.5)], "line") == (None, None)  # real-valued: regression
    with pytest.raises(DataError, match=r"^the targets of 's' are strings \('cat'\): give the dataset a `classes`"):
        classes_from_targets([(torch.zeros(1), "cat")], "s")
    with pytest.raises(DataError, match="^the targets of 'n' hold -1"):
        classes_from_targets([(torch.zeros(1), -1), (torch.zeros(1), 1)], "n")


def test_the_loss_follows_the_data_and_the_network(capsys: pytest.CaptureFixture) -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert log_probabilities(logits.log_softmax(dim=1)) and not log_probabilities(logits)
    assert not log_probabilities(logits.softmax(dim=1))  # probabilities are not log-probabilities
    classes = {"num_classes": 3, "output_size": 3}
    assert loss_for(classes, False, net="n", data="d") == "CrossEntropyLoss"
    assert loss_for(classes, True, net="n", data="d") == "NLLLoss"
    assert loss_for({"output_size": 1}, False, net="n", data="d") == "L1Loss"
    printed = capsys.readouterr().out.splitlines()
    nll = "Loss NLLLoss: the data (d) has 3 classes and model 'n' gives log-probabilities (--model.loss sets another)"
    assert printed[1] == nll
    assert printed[2].startswith("Loss L1Loss: the data (d) has no classes: regression")
    with pytest.raises(ConfigError, match="regression loss: use NLLLoss, as model 'n' gives log-probabilities"):
        check_task(False, "L1Loss", classes, "d", log_probs=True, net="n")
    with pytest.raises(ConfigError, match="^loss NLLLoss takes log-probabilities, but model 'n' gives other scores"):
        check_task(True, "NLLLoss", classes, "d", log_probs=False, net="n")
    with pytest.raises(ConfigError, match="has no classes: its targets are not class indices; to classify, give the"):
        check_task(True, "CrossEntropyLoss", {"output_size": 1}, "d")


def plain_images(dataset: TutorialImages, indices: list[int]) -> torch.Tensor:
    """The images at `indices` as the data module serves them for evaluation: to [0, 1], normalised with 0.5."""
    pixels = [torch.from_numpy(np.array(dataset[i][0])) for i in indices]
    return (torch.stack(pixels).unsqueeze(1).float() / 255 - 0.5) / 0.5


def test_a_torchvision_style_dataset_gets_the_data_modules_transforms_in_memory_or_item_by_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dataset opens PIL images and applies the `transform` it is given: held in memory or served item by item, the
    batches are the same; the training split, carved from the same dataset object as validation, alone is
    augmented."""
    write_tutorial_images(tmp_path, n_train=40, n_test=9)
    monkeypatch.setattr(data_interface, "find_class", lambda *args: TutorialImages)
    augment = {"random_crop_padding": 2, "horizontal_flip": True}
    served, sets = {}, {}
    for mode, workers in (("cpu", 0), ("off", 1)):  # item by item in a loader worker, whose draws are seeded too
        data = DInterface(
            "tutorial", {"root": str(tmp_path)}, batch_size=8, in_memory=mode, num_workers=workers, **augment
        )
        data.setup("fit")
        served[mode] = []
        for split in ("train", "val", "test"):
            torch.manual_seed(7)  # the training order's seed
            served[mode].append([(x.clone(), y.clone()) for x, y in getattr(data, f"{split}_dataloader")()])
        sets[mode] = data
    assert isinstance(sets["cpu"].train_dataloader().dataset, data_interface.InMemorySplit)
    for fast, slow in zip(served["cpu"], served["off"], strict=True):
        assert len(fast) == len(slow) > 0
        for (x, y), (x_ref, y_ref) in zip(fast, slow, strict=True):
            assert x.shape[1:] == (1, 16, 16) and torch.equal(x, x_ref) and torch.equal(y, y_ref)
    data = sets["off"]
    untouched = TutorialImages(str(tmp_path))
    val_indices = data.val_set.dataset.indices
    val_images = torch.cat([x for x, _ in served["off"][1]])
    assert torch.allclose(val_images, plain_images(untouched, val_indices), atol=1e-6)  # validation is not augmented
    train_images = torch.cat([x for x, _ in served["off"][0]])
    plain = plain_images(untouched, data.train_set.dataset.indices)
    unchanged = [any(torch.allclose(image, p, atol=1e-6) for p in plain) for image in train_images]
    assert len(unchanged) == 32 and not all(unchanged)  # training is


def test_the_transform_given_makes_float_tensors_of_pil_images_arrays_and_tensors() -> None:
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    colour = np.stack([grey, 255 - grey, grey // 2], axis=-1)  # H x W x C, as a NumPy image
    expected = torch.from_numpy(grey).float()[None] / 255
    for image, shape in ((grey, (1, 4, 5)), (colour, (3, 4, 5)), (Image.fromarray(grey), (1, 4, 5)),
                         (Image.fromarray(colour), (3, 4, 5)), (torch.from_numpy(grey)[None], (1, 4, 5))):  # fmt: skip
        tensor = to_tensor()(image)
        assert type(tensor) is torch.Tensor and tensor.dtype == torch.float32 and tensor.shape == shape
        assert torch.allclose(tensor[:1], expected)


def test_a_transform_given_as_text_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_interface, "find_class", lambda *args: TutorialImages)
    for key in ("transform", "target_transform"):
        message = f"^data.dataset_args.{key} 'ToTensor': the data module gives dataset 't' its {key}"
        with pytest.raises(ConfigError, match=message):
            DInterface("t", {"root": str(tmp_path), key: "ToTensor"})


# --- end to end --------------------------------------------------------------------------------------------------

QUICK = ("--trainer.max_epochs=2", "--data.num_workers=0")
LEARN = ("--trainer.max_epochs=10", "--data.num_workers=0")  # 40 steps: the stripes are learnt


@pytest.mark.slow
def test_a_net_returning_log_softmax_trains_with_nll_loss_chosen_for_it(project_copy: Path, tmp_path: Path) -> None:
    add_file(project_copy, "model", "mnist_example", Net)
    data = write_mnist(tmp_path / "data", n_train=60, n_test=12)
    run = run_main(
        "--model", "mnist_example", "--data", "mnist", "--data.root", str(data), "--data.batch_size=16", *QUICK,
        cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    line = "Loss NLLLoss: the data (mnist) has 10 classes and model 'mnist_example' gives log-probabilities"
    assert run.stdout.count(line) == 1
    checkpoint = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["loss"] == "NLLLoss"  # loads as it trained, without the data
    assert 0 <= run.results["test"]["test/acc"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("net", [FeatureNet, DictNet], ids=["tuple", "dict"])
def test_nets_returning_a_tuple_or_a_dict_train_and_predict(project_copy: Path, tmp_path: Path, net: type) -> None:
    add_file(project_copy, "model", "tutorial_net", net)
    fit = run_main(
        "--model", "tutorial_net", "--data", "synthetic", "--data.dataset_args.num_samples=400",
        "--data.dataset_args.class_sep=3.0", "--model.optimizer=Adam", *QUICK, cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Loss CrossEntropyLoss: the data (synthetic) has 10 classes" in fit.stdout
    assert fit.results["test"]["test/acc"] > 0.5  # chance is 0.1
    predict = run_main(
        "predict", "--config", str(fit.run_dir / "config.yaml"), "--ckpt_path", str(fit.run_dir / "checkpoints" /
        "last.ckpt"), cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    with open(tmp_path / predict.results["predictions"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 80 and rows[0]["class"].startswith("class ")  # the test split: 20 % of 400
    assert all(0.1 <= float(row["probability"]) <= 1 for row in rows)


@pytest.mark.slow
def test_dict_items_with_targets_and_no_classes_train_a_classifier(project_copy: Path, tmp_path: Path) -> None:
    add_file(project_copy, "model", "small_net", SmallNet)
    add_file(project_copy, "data", "stripes_dict", StripesDict, stripes)
    run = run_main(
        "--model", "small_net", "--data", "stripes_dict", "--model.optimizer=Adam", *LEARN,
        cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Dataset 'stripes_dict' has no `classes`: 3 classes (labels 0 to 2) from its `targets`" in run.stdout
    assert "Loss CrossEntropyLoss: the data (stripes_dict) has 3 classes" in run.stdout
    assert run.results["validation"]["val/acc"] > 0.9 and run.results["test"]["test/acc"] > 0.9


@pytest.mark.slow
def test_integer_labels_alone_are_classes_after_one_pass(project_copy: Path, tmp_path: Path) -> None:
    add_file(project_copy, "model", "small_net", SmallNet)
    add_file(project_copy, "data", "stripes_plain", StripesPlain, stripes)
    run = run_main(
        "--model", "small_net", "--data", "stripes_plain", "--model.optimizer=Adam", *LEARN,
        cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Dataset 'stripes_plain' has no `classes`: 3 classes (labels 0 to 2) read from its 120 items" in run.stdout
    assert run.results["test"]["test/acc"] > 0.9


@pytest.mark.slow
def test_a_torchvision_style_dataset_trains_unchanged(project_copy: Path, tmp_path: Path) -> None:
    add_file(project_copy, "data", "tutorial_images", TutorialImages)
    write_tutorial_images(tmp_path / "data")
    run = run_main(
        "--model", "cnn", "--data", "tutorial_images", "--data.root", str(tmp_path / "data"), "--data.batch_size=8",
        "--data.horizontal_flip=true", "--data.num_workers=0", cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Dataset 'tutorial_images' has no `classes`: 3 classes (labels 0 to 2) read from its 60 items" in run.stdout
    assert run.results["test"]["test/acc"] > 0.9  # chance is 1/3
    text = run_main(
        "--model", "cnn", "--data", "tutorial_images", "--data.root", str(tmp_path / "data"),
        "--data.dataset_args.transform", "torchvision.transforms.ToTensor", cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert text.returncode == 2
    assert text.stderr.strip().splitlines()[-1].startswith(
        "error: data.dataset_args.transform 'torchvision.transforms.ToTensor': the data module gives dataset "
        "'tutorial_images' its transform"
    )


@pytest.mark.slow
def test_what_the_rules_cannot_read_is_one_line_and_item_keys_can_be_set(project_copy: Path, tmp_path: Path) -> None:
    add_file(project_copy, "model", "keyless_net", KeylessNet)
    run = run_main("--model", "keyless_net", "--data", "synthetic", *QUICK, cwd=tmp_path, root=project_copy)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: model 'keyless_net' returns a dict with the keys 'scores', 'embedding', none of which is known as the "
        "prediction: name it logits, out, output, prediction, pred or y_hat in the dict, or return the prediction "
        "first in a tuple"
    )
    add_file(project_copy, "model", "small_net", SmallNet)
    add_file(project_copy, "data", "odd_keys", StripesOddKeys, stripes)
    run = run_main("--model", "small_net", "--data", "odd_keys", *QUICK, cwd=tmp_path, root=project_copy)
    assert run.returncode == 2
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "error: the items of 'odd_keys' are dicts with the keys 'pixels', 'category', none of which is known as the "
        "input: set --data.input_key"
    )
    keyed = ("--data.input_key", "pixels", "--data.target_key", "category", "--trainer.fast_dev_run=true")
    run = run_main("--model", "small_net", "--data", "odd_keys", *keyed, cwd=tmp_path, root=project_copy)
    assert run.returncode == 0, run.stderr[-3000:]
