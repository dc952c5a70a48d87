"""Classification in process: image transforms, the data-to-model sizes, metrics, weight init, clear mismatches."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import write_mnist

from data.data_interface import DInterface
from model.model_interface import MInterface
from utils import ConfigError


def fitted(model: MInterface, data: DInterface, **trainer_args) -> pl.Trainer:
    """`model` fitted on `data` by a quiet CPU Trainer that writes nothing."""
    args = {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = pl.Trainer(**{**args, **trainer_args}, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, data)
    return trainer


@pytest.fixture
def mnist_root(tmp_path: Path) -> str:
    return str(write_mnist(tmp_path / "data", n_train=60, n_test=12))


def test_images_are_normalised_with_the_datasets_constants_and_augmented_in_training_only(mnist_root: str) -> None:
    data = DInterface(dataset="mnist", dataset_args={"root": mnist_root}, horizontal_flip=True, random_crop_padding=3)
    data.setup("fit")
    raw = data.dataset[data.val_set.dataset.indices[0]][0]
    torch.testing.assert_close(data.val_set[0][0], (raw - 0.1307) / 0.3081)  # evaluation: normalised only
    index = data.train_set.dataset.indices[0]
    raw = data.dataset[index][0]
    torch.manual_seed(0)
    augmented = torch.stack([data.train_set[0][0] for _ in range(20)])
    assert augmented.shape == (20, 1, 28, 28)
    assert not all(torch.equal(a, (raw - 0.1307) / 0.3081) for a in augmented)  # training: changed at random
    assert len({a.sum().item() for a in augmented}) > 1


def test_resize_changes_the_sizes_given_to_the_model(mnist_root: str) -> None:
    data = DInterface(dataset="mnist", dataset_args={"root": mnist_root}, resize=[16, 12])
    data.setup("fit")
    assert data.val_set[0][0].shape == (1, 16, 12)
    image = {"in_channels": 1, "image_size": [16, 12]}
    assert data.dims == {"input_size": 192, "output_size": 10, "num_classes": 10, **image}
    assert data.classes[:2] == ["0 - zero", "1 - one"]


def test_image_options_on_non_image_data_are_an_error() -> None:
    data = DInterface(dataset="line", horizontal_flip=True)
    with pytest.raises(ConfigError, match="are for images"):
        data.setup("fit")


def test_sizes_flow_from_the_data_into_the_network_and_the_checkpoint(mnist_root: str) -> None:
    model = MInterface(net="cnn", net_args={"channels": [4, 8]}, loss="CrossEntropyLoss", optimizer="Adam")
    assert model.net is None  # waits for the data
    fitted(model, DInterface(dataset="mnist", dataset_args={"root": mnist_root}, batch_size=16), max_steps=1)
    assert model.net.head[-1].out_features == 10 and model.net.features[0].in_channels == 1
    assert model.hparams.net_args == {"channels": [4, 8], "num_classes": 10, "in_channels": 1}
    standalone = MInterface(**model.hparams)  # what load_from_checkpoint does: no data needed
    assert standalone.net.head[-1].out_features == 10


@pytest.mark.parametrize(
    ("model_args", "data_args", "message"),
    [
        ({"net": "cnn", "net_args": {"num_classes": 5}}, {}, r"num_classes is 5 but the data \(mnist\) has 10"),
        ({"net": "mlp", "net_args": {"input_size": 100}}, {}, "input_size is 100 but the data .* has 784"),
        ({"net": "cnn", "loss": "L1Loss"}, {}, "has 10 classes but loss L1Loss is a regression loss"),
        ({"net": "linear"}, {"dataset": "line", "dataset_args": {}}, None),
        ({"net": "mlp"}, {"dataset": "line", "dataset_args": {}}, "has no classes: its targets are not class indices"),
    ],
)
def test_mismatches_between_model_and_data_are_clear_errors(
    mnist_root: str, model_args: dict, data_args: dict, message: str | None
) -> None:
    model = MInterface(**{"loss": "CrossEntropyLoss", **model_args} if message else {**model_args})
    data = DInterface(**{"dataset": "mnist", "dataset_args": {"root": mnist_root}, **data_args})
    if message is None:
        fitted(model, data, max_steps=1)  # the regression pairing works
        return
    with pytest.raises(ConfigError, match=message):
        fitted(model, data, max_steps=1)


def test_a_network_whose_output_does_not_fit_the_data_is_named(mnist_root: str) -> None:
    model = MInterface(net="linear", loss="CrossEntropyLoss")  # one output per pixel, not 10 class scores
    with pytest.raises(ConfigError, match="'linear' gives 784 outputs per item but the data needs 10"):
        fitted(model, DInterface(dataset="mnist", dataset_args={"root": mnist_root}), max_steps=1)


def test_accuracy_is_logged_per_split_and_the_sanity_check_never_counts() -> None:
    model = MInterface(net="mlp", loss="CrossEntropyLoss", optimizer="Adam", lr=0.01)
    data = DInterface(dataset="synthetic", dataset_args={"num_samples": 600}, batch_size=50)
    trainer = fitted(model, data, max_epochs=2, num_sanity_val_steps=2)
    metrics = trainer.callback_metrics
    assert {"train/acc", "val/acc", "val/acc_top5", "val/acc_best", "val/loss"} <= set(metrics)
    model.eval()
    with torch.no_grad():
        x, y = (torch.stack([torch.as_tensor(v) for v in item]) for item in zip(*data.val_set, strict=True))
        expected = (model(x).argmax(1) == y).float().mean()
    # Computed over the whole validation split of the last epoch: nothing left over from the sanity check.
    torch.testing.assert_close(metrics["val/acc"], expected)
    assert metrics["val/acc_best"] >= metrics["val/acc"] > 0.8
    test = trainer.test(model, data, verbose=False)[0]
    assert test["test/acc"] > 0.8 and test["test/acc_top5"] >= test["test/acc"]


def test_label_smoothing_reaches_the_loss() -> None:
    model = MInterface(net="mlp", loss="CrossEntropyLoss", loss_args={"label_smoothing": 0.2})
    assert model.loss_fn.label_smoothing == 0.2 and model.classification


def test_weight_init_option_initialises_the_network() -> None:
    model = MInterface(net="mlp", net_args={"input_size": 64, "output_size": 3}, init="orthogonal", init_bias=0.1)
    first = model.net.layers[0]
    gram = first.weight.T @ first.weight
    torch.testing.assert_close(gram, 2 * torch.eye(64), atol=1e-4, rtol=0)  # orthogonal, with ReLU's gain sqrt(2)
    assert torch.all(first.bias == 0.1)
    pretrained = {"num_classes": 2, "in_channels": 3, "weights_path": "w.pth"}
    with pytest.raises(ConfigError, match="overwrite the pretrained"):
        MInterface(net="torchvision_model", net_args=pretrained, init="normal")
