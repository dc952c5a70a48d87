"""The fast data path (data held in memory, served in whole batches), the loader defaults, the progress bar's pace
and the training loss logged over the steps between two logs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import image_pixels, run_main, write_image_folder, write_mnist
from lightning.pytorch.loggers import CSVLogger
from torchvision.io import write_png

import data._in_memory as in_memory
from callbacks import ProgressBar
from data._in_memory import InMemorySplit
from data.data_interface import DInterface
from model.model_interface import MInterface
from utils import ConfigError, DataError


def batches(data: DInterface, split: str, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1234)  # the training order's seed
    loader = getattr(data, f"{split}_dataloader")()
    if loader.sampler is not None and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    torch.manual_seed(100 + epoch)  # not the augmentation's seed: each item's draws have their own
    return [(x.clone(), torch.as_tensor(y)) for x, y in loader]


@pytest.fixture
def mnist_root(tmp_path: Path) -> str:
    return str(write_mnist(tmp_path / "data", n_train=70, n_test=20))


@pytest.mark.parametrize(
    ("dataset", "args", "options"),
    [
        ("line", {}, {}),
        ("synthetic", {"num_samples": 300}, {}),
        ("mnist", None, {"random_crop_padding": 2, "horizontal_flip": True}),
        ("mnist", None, {"resize": [20, 16]}),
    ],
)
def test_in_memory_batches_are_the_item_paths_batches(
    dataset: str, args: dict | None, options: dict, mnist_root: str
) -> None:
    """Same order per epoch, same augmentation draws, same values: only faster. Item by item in a loader worker
    too, since each item's random draws are seeded by its place in the epoch's order."""
    args = {"root": mnist_root} if args is None else args
    served = {}
    for mode, workers in (("cpu", 0), ("off", 1)):
        data = DInterface(
            dataset=dataset, dataset_args=args, batch_size=16, in_memory=mode, num_workers=workers, **options
        )
        data.setup("fit")
        served[mode] = [batches(data, "train", epoch) for epoch in (0, 1)]
        served[mode] += [batches(data, "val"), batches(data, "test")]
        assert isinstance(data.train_dataloader().dataset, InMemorySplit) == (mode == "cpu")
    assert len(served["cpu"]) == len(served["off"]) == 4
    for fast, slow in zip(served["cpu"], served["off"], strict=True):
        assert len(fast) == len(slow) > 0
        for (x, y), (x_ref, y_ref) in zip(fast, slow, strict=True):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref.to(y.dtype))
    first, second = served["cpu"][0], served["cpu"][1]
    assert not torch.equal(first[0][0], second[0][0])  # a new order each epoch


def test_images_of_different_sizes_are_resized_one_by_one_before_they_are_held(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_per_class=3, size=8)
    for name in ("cat/00.png", "dog/01.png"):
        write_png(image_pixels(7, size=12), str(tmp_path / "train" / name))
    served = {}
    for mode in ("cpu", "off"):
        args = {"dataset_args": {"root": str(tmp_path)}, "resize": [6, 6], "batch_size": 4, "num_workers": 0}
        data = DInterface(dataset="image_folder", in_memory=mode, **args)
        data.setup("fit")
        served[mode] = batches(data, "train") + batches(data, "val")
    for (x, y), (x_ref, y_ref) in zip(served["cpu"], served["off"], strict=True):
        assert x.shape[1:] == (3, 6, 6) and torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_training_in_memory_gives_the_same_weights_as_item_by_item() -> None:
    weights = []
    for mode in ("cpu", "off"):
        pl.seed_everything(3)
        model = MInterface(net="mlp", loss="CrossEntropyLoss", optimizer="Adam", lr=0.01)
        data = DInterface(
            dataset="synthetic", dataset_args={"num_samples": 400}, batch_size=32, in_memory=mode, num_workers=0
        )
        trainer = pl.Trainer(
            max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
        )
        trainer.fit(model, data)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_auto_serves_small_tensor_data_from_memory_and_big_data_item_by_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = DInterface(dataset="synthetic")
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.dataset, InMemorySplit) and loader.num_workers == 0
    assert loader.dataset.inputs.shape == (len(data.train_set), 20)

    monkeypatch.setattr(in_memory, "AUTO_LIMIT_BYTES", 1000)
    monkeypatch.setattr("data.data_interface.AUTO_LIMIT_BYTES", 1000)
    data = DInterface(dataset="synthetic")
    data.setup("fit")
    loader = data.train_dataloader()
    assert not isinstance(loader.dataset, InMemorySplit)
    assert loader.num_workers >= 1 and loader.persistent_workers  # item by item: workers, kept alive
    data = DInterface(dataset="synthetic", in_memory="cpu")  # asked for explicitly: held whatever its size
    data.setup("fit")
    assert isinstance(data.train_dataloader().dataset, InMemorySplit)


def test_data_that_cannot_be_held_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    data = DInterface(dataset="synthetic", in_memory="cpu")
    data.setup("fit")
    monkeypatch.setattr(data, "dataset", [({"features": torch.zeros(3)}, 1)])  # items that are not tensors
    with pytest.raises(ConfigError, match="in_memory cpu: the items of 'synthetic' are not an input tensor"):
        data.train_dataloader()
    data = DInterface(dataset="synthetic")
    data.setup("fit")
    monkeypatch.setattr(data, "dataset", [({"features": torch.zeros(3)}, 1)])
    assert not isinstance(data.train_dataloader().dataset, InMemorySplit)  # auto: item by item


def test_loader_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="in_memory device serves batches from the device in the main process"):
        DInterface(in_memory="device", num_workers=2)
    with pytest.raises(ConfigError, match="remove data.num_workers and data.pin_memory"):
        DInterface(in_memory="device", pin_memory=True)
    with pytest.raises(ConfigError, match="in_memory must be auto, cpu, device or off, got 'gpu'"):
        DInterface(in_memory="gpu")
    with pytest.raises(ConfigError, match="needs data.num_workers > 0"):
        DInterface(persistent_workers=True)
    data = DInterface(dataset="line", in_memory="off", num_workers=0)
    data.setup("fit")
    assert data.train_dataloader().num_workers == 0


def test_progress_bar_redraws_at_its_pace_and_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.1, 100.2, 100.6, 100.7])
    monkeypatch.setattr("callbacks.progress_bar.time.monotonic", lambda: next(clock))
    bar = ProgressBar(refresh_seconds=0.5)
    assert [bar._should_update(n, 10) for n in (1, 2, 3, 4, 10)] == [True, False, False, True, True]
    with pytest.raises(ConfigError, match="refresh_seconds must be >= 0"):
        ProgressBar(refresh_seconds=-1)


class BatchLosses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, *args) -> None:
        self.losses.append(float(outputs["loss"]))


def test_train_loss_is_the_mean_since_the_last_log(tmp_path: Path) -> None:
    """Logged every 3 steps and at the end of each 5-batch epoch, each value the mean over the batches before it."""
    losses = BatchLosses()
    data = DInterface(
        dataset="synthetic", dataset_args={"num_samples": 200}, val_fraction=0.1, test_fraction=0.1, batch_size=32
    )
    trainer = pl.Trainer(
        max_epochs=2,
        log_every_n_steps=3,
        logger=CSVLogger(tmp_path),
        callbacks=[losses],
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(MInterface(net="mlp", loss="CrossEntropyLoss", optimizer="Adam"), data)
    assert len(losses.losses) == 10  # two epochs of 5 batches of 32
    rows = [line.split(",") for line in (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()]
    step, loss = rows[0].index("step"), rows[0].index("train/loss")
    logged = [float(row[loss]) for row in sorted(rows[1:], key=lambda row: int(row[step])) if row[loss]]
    # The logger writes at the 3rd, 6th and 9th batch. Batch 5 ended the first epoch, which logs too, so the
    # 6th batch's value is its own loss alone.
    mean = [sum(w) / len(w) for w in (losses.losses[0:3], losses.losses[5:6], losses.losses[6:9])]
    assert logged == pytest.approx(mean, rel=1e-5)
    assert "train/acc_top5" not in trainer.callback_metrics and "val/acc_top5" in trainer.callback_metrics


def test_train_loss_under_gradient_accumulation_is_logged_after_the_optimizer_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each logged value is the mean over all batches since the last one, logged only where gradients are applied
    (every 2nd batch) or an epoch ends, so no batch's loss is dropped from the curve."""
    losses, logged = BatchLosses(), []
    log = MInterface.log

    def recording_log(self: MInterface, name: str, value: torch.Tensor, *args, **kwargs) -> None:
        if name == "train/loss":
            logged.append((len(losses.losses), float(value)))  # the index of the batch being trained
        log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(MInterface, "log", recording_log)
    data = DInterface(
        dataset="synthetic", dataset_args={"num_samples": 200}, val_fraction=0.1, test_fraction=0.1, batch_size=32
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        log_every_n_steps=1,
        callbacks=[losses],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(MInterface(net="mlp", loss="CrossEntropyLoss", optimizer="Adam"), data)
    assert [batch for batch, _ in logged] == [1, 3, 4, 6, 8, 9]  # 5 batches per epoch: steps after 2, 4, and 5
    start = 0
    for batch, value in logged:
        window = losses.losses[start : batch + 1]  # as callbacks see them: divided by accumulate_grad_batches
        assert value == pytest.approx(2 * sum(window) / len(window), rel=1e-5)
        start = batch + 1


@pytest.mark.slow
def test_a_progress_bar_of_ones_own_replaces_the_templates(tmp_path: Path) -> None:
    bar = "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"
    run = run_main(
        "--model", "linear", "--trainer.max_epochs", "3", bar, "--trainer.callbacks.refresh_rate", "1", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]


class BatchAccuracy(pl.Callback):
    """Counts the correct predictions of the network each training batch meets, before its step changes it."""

    def __init__(self) -> None:
        self.correct = self.seen = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        x, y = batch
        with torch.no_grad():
            self.correct += int((pl_module(x).argmax(1) == y).sum())
        self.seen += len(y)


def test_train_accuracy_counts_every_batch_of_the_epoch(tmp_path: Path) -> None:
    """train/acc, counted on the device at each step (not with torchmetrics), is the epoch's share of correct
    predictions, each made by the network as the batch met it."""
    counted = BatchAccuracy()
    data = DInterface(dataset="synthetic", dataset_args={"num_samples": 300}, val_fraction=0.1, batch_size=32)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, callbacks=[counted], enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(MInterface(net="mlp", loss="CrossEntropyLoss", optimizer="SGD", lr=0.5), data)
    assert counted.seen == len(data.train_set) and 0 < counted.correct < counted.seen
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(counted.correct / counted.seen, abs=1e-6)


class Numbered(torch.utils.data.Dataset):
    """Item i: a 2 x 3 input filled with i and the target i % 5; item `bad` fails to load, with a DataError."""

    def __init__(self, size: int, bad: int | None = None) -> None:
        self.size, self.bad = size, bad

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == self.bad:
            raise DataError(f"cannot decode image {index}.png")
        return torch.full((2, 3), float(index)), index % 5


def test_items_read_by_worker_processes_stack_as_those_read_in_one() -> None:
    serial = in_memory.stack_items(Numbered(45), chunk=8, workers=0)
    parallel = in_memory.stack_items(Numbered(45), per_chunk=lambda x: x, chunk=8, workers=2)
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1])
    assert torch.equal(serial[0][:, 0, 0], torch.arange(45.0)) and serial[1].tolist() == [i % 5 for i in range(45)]


def test_an_item_that_fails_in_a_worker_process_raises_its_own_error() -> None:
    """Not DataLoader's wrapped traceback: the dataset's error, with its one-line message."""
    with pytest.raises(DataError, match=r"^cannot decode image 30\.png$"):
        in_memory.stack_items(Numbered(45, bad=30), chunk=8, workers=2)


def test_worker_processes_read_only_when_reading_is_slow() -> None:
    assert in_memory._workers_for(chunks_left=40, seconds_per_chunk=0.001, workers=None) == 0  # 0.04 s in all
    assert in_memory._workers_for(chunks_left=3, seconds_per_chunk=1.0, workers=8) == 3  # one per chunk at most
