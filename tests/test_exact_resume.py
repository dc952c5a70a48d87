"""A run interrupted at any step and resumed from its last.ckpt ends bit-identical to one that was not interrupted:
the same order of items, the same random draws (dropout, augmentation), the same schedule and warm-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import RaiseAt, write_image_folder

from callbacks import AtomicCheckpointIO, ResumableCheckpoint
from data._sampling import Draw, EpochShuffle
from data.data_interface import DInterface
from model.model_interface import MInterface
from utils import ConfigError

# 200 blobs, 120 of them train: 8 batches of 16 per epoch (the last one of 8 items).
BLOBS = {"dataset": "synthetic", "dataset_args": {"num_samples": 200, "num_features": 6, "num_classes": 3}}
MLP = {"net": "mlp", "net_args": {"hidden_sizes": [16], "dropout": 0.5}, "loss": "CrossEntropyLoss"}
SCHEDULE = {"lr_scheduler": "StepLR", "lr_scheduler_args": {"step_size": 5, "gamma": 0.5}}
SCHEDULE["lr_scheduler_interval"] = "step"


class Crash(Exception):
    """A failure mid-training, after which ResumableCheckpoint writes last.ckpt."""


class Seen(pl.Callback):
    """The inputs of every training batch, and the learning rate of every step."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, *args: Any) -> None:
        self.inputs.append(batch[0].clone())
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit(
    directory: Path, model: dict[str, Any], data: dict[str, Any], epochs: int, *callbacks: pl.Callback,
    ckpt_path: str | None = None,
) -> MInterface:  # fmt: skip
    """Train as main.py does (seeded with 42, deterministic), saving last.ckpt into `directory`."""
    pl.seed_everything(42, verbose=False)
    module = MInterface(**model)
    trainer = pl.Trainer(
        max_epochs=epochs, deterministic=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", default_root_dir=directory, plugins=[AtomicCheckpointIO()], num_sanity_val_steps=2,
        callbacks=[ResumableCheckpoint(dirpath=directory, monitor="val/loss", save_last=True), *callbacks],
    )  # fmt: skip
    trainer.fit(module, datamodule=DInterface(**data), ckpt_path=ckpt_path)
    return module


def interrupted_and_resumed(
    tmp_path: Path, model: dict[str, Any], data: dict[str, Any], epochs: int, step: int
) -> tuple[MInterface, Seen, Seen]:
    """Train until a crash after `step`, then resume from last.ckpt to the end; the batches each part saw."""
    before, after = Seen(), Seen()
    with pytest.raises(Crash):
        fit(tmp_path, model, data, epochs, RaiseAt(step, Crash), before)
    last = tmp_path / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == step
    return fit(tmp_path, model, data, epochs, after, ckpt_path=str(last)), before, after


def assert_same_weights(a: MInterface, b: MInterface) -> None:
    expected, got = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("step", [3, 8, 13])  # mid-epoch 0, the end of epoch 0, mid-epoch 1
@pytest.mark.parametrize(
    ("in_memory", "schedule"),
    [("auto", SCHEDULE), ("off", SCHEDULE), ("auto", {})],  # the warm-up alone, without a schedule to step it
)
def test_a_run_resumed_after_any_step_ends_as_an_uninterrupted_one(
    tmp_path: Path, step: int, in_memory: str, schedule: dict[str, Any]
) -> None:
    model = {**MLP, **schedule, "warmup": 6}  # dropout, a per-step schedule, a warm-up longer than the first crash
    data = {**BLOBS, "batch_size": 16, "in_memory": in_memory, "num_workers": 0}
    whole = Seen()
    uninterrupted = fit(tmp_path / "whole", model, data, 3, whole)
    resumed, before, after = interrupted_and_resumed(tmp_path / "parts", model, data, 3, step)
    assert len(before.inputs) == step and len(whole.inputs) == 24
    # Every batch after the crash is the one the uninterrupted run saw next.
    assert all(torch.equal(x, y) for x, y in zip(before.inputs + after.inputs, whole.inputs, strict=True))
    assert before.lrs + after.lrs == whole.lrs  # the warm-up and schedule go on, not restart
    assert_same_weights(uninterrupted, resumed)
    assert uninterrupted.trainer.global_step == resumed.trainer.global_step == 24


@pytest.mark.slow
def test_augmented_images_in_loader_workers_resume_mid_epoch_exactly(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", n_per_class=8, size=12)
    model = {"net": "cnn", "loss": "CrossEntropyLoss", "net_args": {"channels": [4]}}
    data = {
        "dataset": "image_folder", "dataset_args": {"root": str(tmp_path / "images")}, "batch_size": 4,
        "in_memory": "off", "num_workers": 2, "random_crop_padding": 2, "horizontal_flip": True, "val_fraction": 0.25,
    }  # fmt: skip
    whole = Seen()
    uninterrupted = fit(tmp_path / "whole", model, data, 2, whole)
    resumed, before, after = interrupted_and_resumed(tmp_path / "parts", model, data, 2, step=4)
    assert all(torch.equal(x, y) for x, y in zip(before.inputs + after.inputs, whole.inputs, strict=True))
    assert_same_weights(uninterrupted, resumed)
    # The same draws in the main process as in workers: in memory (no workers) the batches are the same.
    in_memory = Seen()
    fit(tmp_path / "in_memory", model, {**data, "in_memory": "auto", "num_workers": 0}, 2, in_memory)
    assert all(torch.equal(x, y) for x, y in zip(in_memory.inputs, whole.inputs, strict=True))


def draws(sampler: EpochShuffle) -> list[tuple[int, int]]:
    return [(int(index), index.seed) for index in sampler]


@pytest.mark.parametrize("devices", [1, 2, 3])
def test_each_device_resumes_its_own_share_of_the_epoch_with_the_same_draws(devices: int) -> None:
    items = list(range(50))
    one_device = EpochShuffle(items, seed=7)
    one_device.set_epoch(1)
    whole = draws(one_device)
    assert sorted(index for index, _ in whole) == items and len({seed for _, seed in whole}) == 50
    shares = []
    for rank in range(devices):
        sampler = EpochShuffle(items, seed=7, num_replicas=devices, rank=rank)
        sampler.set_epoch(1)
        share = draws(sampler)
        shares += share
        resumed = EpochShuffle(items, seed=7, num_replicas=devices, rank=rank)
        resumed.resume(epoch=1, items=5)
        assert draws(resumed) == share[5:]  # the rest of this device's share, with the same seeds
        assert draws(resumed) == share  # and the whole share in the next pass
        resumed.resume(epoch=1, items=len(share))  # the share was done: the next epoch, from its start
        assert resumed.epoch == 2 and draws(resumed)[0] != share[0]
    # Whatever the number of devices, an item drawn at a place of the order gets the same seed.
    assert set(shares) >= set(whole) and len(shares) - len(whole) < devices  # DistributedSampler's padding


@pytest.mark.parametrize(
    "state", [{"epoch": -1, "items": 0}, {"epoch": 0, "items": 2**70}, {"epoch": "0", "items": 3}, {"epoch": 1}]
)
def test_a_checkpoints_place_in_the_order_that_this_template_did_not_write_is_refused(state: dict) -> None:
    with pytest.raises(ConfigError, match="is not an epoch and a number of items"):
        DInterface().load_state_dict(state)


@pytest.mark.parametrize("rng", [{"torch": "state"}, {"torch": torch.zeros(3)}, {}, "rng"])
def test_a_checkpoints_random_state_that_this_template_did_not_write_is_refused(rng: Any) -> None:
    with pytest.raises(ConfigError, match="the checkpoint's random state is not what this template writes"):
        MInterface().on_load_checkpoint({"resume": {"rng": rng}})


@pytest.mark.parametrize("devices", [1, 3])
def test_a_split_without_draws_gets_the_same_order_as_plain_ints(devices: int) -> None:
    items = list(range(50))
    for rank in range(devices):
        with_draws = EpochShuffle(items, seed=7, num_replicas=devices, rank=rank)
        plain = EpochShuffle(items, seed=7, num_replicas=devices, rank=rank, draws=False)
        with_draws.set_epoch(2)
        plain.set_epoch(2)
        order = list(plain)
        assert all(type(index) is int for index in order)
        assert order == [int(index) for index in with_draws]
        plain.resume(epoch=2, items=7)
        assert list(plain) == order[7:]


@pytest.mark.parametrize(("in_memory", "seeded"), [("auto", False), ("off", True)])
def test_only_a_split_that_draws_per_item_gets_seeds(in_memory: str, seeded: bool) -> None:
    data = DInterface(**BLOBS, batch_size=16, in_memory=in_memory, num_workers=0)
    data.setup("fit")
    data.train_dataloader()
    assert isinstance(next(iter(data._sampler)), Draw) is seeded
