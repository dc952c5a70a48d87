"""Training controls end to end: finders, callbacks, TensorBoard, reproducibility, precision, devices."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import ROOT, Run, run_main, write_mnist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from test_classification import fitted

from data.data_interface import DInterface
from model.mlp import MLP
from model.model_interface import MInterface
from utils import ConfigError

CHANNELS_LAST = torch.channels_last
MLP_SHORT = ("--model", "mlp", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false")


def ok(run: Run) -> Run:
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def whole_split_accuracy(model: MInterface, data: DInterface) -> float:
    """The accuracy of `model` over the whole test split, in this one process."""
    data.setup("test")
    model.eval()
    loader = torch.utils.data.DataLoader(data.test_set, batch_size=1000)
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return correct / len(data.test_set)


def whole_split_loss(model: MInterface, data: DInterface, split: str) -> float:
    """The mean loss of `model` over the whole `split` (val or test), in this one process."""
    data.setup("fit")
    model.eval()
    x, y = next(iter(torch.utils.data.DataLoader(getattr(data, f"{split}_set"), batch_size=10_000)))
    with torch.no_grad():
        return model.loss_fn(model(x), y).item()


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def hparams_tab(events: EventAccumulator) -> tuple[dict[str, Any], list[str]]:
    """What TensorBoard's HPARAMS tab shows of a run: each hyperparameter's value, and the metrics' tags."""
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return values, [info.name.tag for info in experiment.metric_infos]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_processes_train_with_synced_metrics_and_write_one_run(tmp_path: Path, strategy: str) -> None:
    run = ok(
        run_main(
            *MLP_SHORT,
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            f"--trainer.strategy={strategy}",
            cwd=tmp_path,
        )
    )
    assert "cpu x2" in run.stdout
    # 2,800 training items in batches of 64, split between two processes: 22 steps per epoch, not 44.
    assert "Trained 2 epochs (44 steps)" in run.stdout
    assert list((tmp_path / "runs" / "mlp").iterdir()) == [run.run_dir]
    assert len(list(tmp_path.rglob("results.json"))) == 1
    assert sorted(p.name for p in (run.run_dir / "checkpoints").iterdir()) == ["best-epoch=1.ckpt", "last.ckpt"]
    # The logged test accuracy covers both processes' halves: it is the accuracy over the whole split.
    data = DInterface(**yaml.safe_load((run.run_dir / "config.yaml").read_text())["data"])
    model = MInterface.load_from_checkpoint(tmp_path / run.results["best_checkpoint"])
    assert run.results["test"]["test/acc"] == pytest.approx(whole_split_accuracy(model, data), abs=1e-6)
    assert run.results["test"]["test/acc"] > 0.9
    # So do the losses, whose halves have means of their own (val: 2 x 200 items, test: 2 x 400).
    for split, results in (("val", "validation"), ("test", "test")):
        assert run.results[results][f"{split}/loss"] == pytest.approx(whole_split_loss(model, data, split), abs=1e-5)


def test_each_process_destroys_its_process_group_before_python_shuts_down(tmp_path: Path) -> None:
    # Left to Python's shutdown, a gloo worker thread that still holds queued collectives' tensors frees them then,
    # and the process aborts ("terminate called without an active exception").
    script = f"""
import atexit
import torch
import torch.distributed as dist
from callbacks import ProcessGroupTeardown
atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))  # runs after the callback's own
dist.init_process_group("gloo", init_method="file://{tmp_path / "store"}", rank=0, world_size=1)
for _ in range(2000):
    dist.all_reduce(torch.ones(100), async_op=True)
for stage in ("fit", "validate", "test"):
    ProcessGroupTeardown().setup(None, None, stage)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["initialized at exit: False"]


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path: Path) -> None:
    runs = [
        ok(run_main(*MLP_SHORT, "--trainer.deterministic=true", f"--seed_everything={seed}", cwd=tmp_path))
        for seed in (7, 7, 8)
    ]
    weights = [torch.load(run.run_dir / "model.pth", weights_only=True) for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert runs[0].results["test"] == runs[1].results["test"]
    assert runs[0].results["fit"] == runs[1].results["fit"]
    assert not torch.equal(weights[0]["layers.0.weight"], weights[2]["layers.0.weight"])
    assert runs[0].results["test"]["test/loss"] != runs[2].results["test"]["test/loss"]


@pytest.mark.slow
def test_lr_find_prints_plots_and_trains_at_the_suggestion(tmp_path: Path) -> None:
    run = ok(
        run_main("lr_find", *MLP_SHORT, "--model.optimizer=RMSprop", "--num_training=40", "--train=true", cwd=tmp_path)
    )
    printed = float(re.search(r"Suggested learning rate: (\S+)", run.stdout)[1])
    suggested = run.results["lr_find"]["suggested_lr"]
    assert suggested == pytest.approx(printed, rel=1e-2)
    assert (run.run_dir / "lr_find.png").stat().st_size > 10_000
    last = checkpoint(run.run_dir / "checkpoints" / "last.ckpt")
    assert last["hyper_parameters"]["lr"] == suggested
    group = last["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == suggested and "alpha" in group  # RMSprop trained at the suggested rate
    assert "test/acc" in run.results["test"]
    assert yaml.safe_load((run.run_dir / "hparams.yaml").read_text())["lr"] == suggested
    assert not list(tmp_path.rglob(".lr_find*")) and not list(ROOT.glob(".lr_find*"))


@pytest.mark.slow
def test_scale_batch_size_finds_and_applies_a_batch_size(tmp_path: Path) -> None:
    run = ok(run_main("scale_batch_size", *MLP_SHORT, "--max_trials=3", "--train=true", cwd=tmp_path))
    assert "Suggested batch size: 8" in run.stdout  # 2, doubled in each of 3 trials
    assert run.results["scale_batch_size"] == {"suggested_batch_size": 8}
    assert checkpoint(run.run_dir / "checkpoints" / "last.ckpt")["datamodule_hyper_parameters"]["batch_size"] == 8
    assert "Trained 2 epochs (700 steps)" in run.stdout  # 2,800 items in batches of 8
    assert not list(tmp_path.rglob(".scale_batch_size*")) and not list(ROOT.glob(".scale_batch_size*"))


@pytest.mark.slow
def test_tensorboard_holds_the_lr_curve_final_metrics_as_hparams_and_the_graph(tmp_path: Path) -> None:
    run = ok(
        run_main(
            *MLP_SHORT,
            "--model.warmup=20",
            "--trainer.log_every_n_steps=5",
            "--trainer.logger.init_args.log_graph=true",
            cwd=tmp_path,
        )
    )
    events = EventAccumulator(str(run.run_dir))
    events.Reload()
    lrs = {e.step: e.value for e in events.Scalars("lr-Adam")}
    # Logged every 5 steps (at steps 4, 9, ...): 20 steps of warm-up from 0, then Adam's 1e-3.
    assert [lrs[step] for step in (4, 9, 14, 19)] == pytest.approx([1e-3 * step / 20 for step in (4, 9, 14, 19)])
    assert lrs[24] == lrs[84] == pytest.approx(1e-3)
    hparams, metrics = hparams_tab(events)
    # Each hyperparameter's value: from the command line, the config file, the data module and the data.
    assert hparams["warmup"] == 20 and hparams["optimizer"] == "Adam" and hparams["lr"] == pytest.approx(1e-3)
    assert hparams["batch_size"] == 64 and hparams["net_args/input_size"] == 20
    for name in ("test/acc", "val/acc_best", "val/loss"):
        assert f"hp/{name}" in metrics
        final = run.results["test" if name.startswith("test") else "fit" if name.endswith("best") else "validation"]
        assert events.Scalars(f"hp/{name}")[-1].value == pytest.approx(final[name])
    assert "hp_metric" not in events.Tags()["scalars"]
    assert events.Tags()["graph"]


@pytest.mark.slow
def test_callbacks_added_from_the_command_line_and_checkpoint_settings(tmp_path: Path) -> None:
    run = ok(
        run_main(
            "--model",
            "linear",
            "--trainer.max_epochs=20",
            "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.dirpath=every",
            "--trainer.callbacks.filename={epoch}",
            "--trainer.callbacks.every_n_epochs=5",
            "--trainer.callbacks.save_top_k=-1",
            "--trainer.callbacks.save_on_train_epoch_end=true",
            "--checkpoint.save_top_k=2",
            "--checkpoint.monitor=val/loss",
            cwd=tmp_path,
        )
    )
    names = sorted(p.name for p in (tmp_path / "every").iterdir())
    assert names == ["epoch=14.ckpt", "epoch=19.ckpt", "epoch=4.ckpt", "epoch=9.ckpt"]
    assert (run.run_dir / "predictions.png").is_file()  # the config's own callback still runs
    best = sorted(p.name for p in (run.run_dir / "checkpoints").glob("best-*"))
    assert best == ["best-epoch=19.ckpt", "best-epoch=9.ckpt"]  # validated every 10 epochs, the two best kept


@pytest.mark.slow
def test_training_controls_from_a_yaml_config(tmp_path: Path) -> None:
    config = tmp_path / "controls.yaml"
    config.write_text(
        """
seed_everything: 3
trainer:
  max_epochs: 3
  accumulate_grad_batches: 2
  gradient_clip_val: 1.0
  deterministic: true
  precision: bf16-mixed
  enable_progress_bar: false
model:
  net: mlp
  loss: CrossEntropyLoss
  optimizer: SGD
  optimizer_args: {momentum: 0.9}
  lr: 0.05
  weight_decay: 0.0001
  lr_scheduler: LambdaLR
  lr_scheduler_args: {lr_lambda: "1 / (epoch + 1)"}
  warmup: 10
data:
  dataset: synthetic
  val_fraction: 0.1
  batch_size: 64
early_stopping: null
"""
    )
    run = ok(run_main("fit", "--config", str(config), cwd=tmp_path))
    assert "precision bf16-mixed" in run.stdout
    assert "Trained 3 epochs (66 steps)" in run.stdout  # 44 batches per epoch, 2 per optimizer step
    epoch_lrs = re.findall(r"^epoch \d/3 .* lr (\S+)", run.stdout, flags=re.MULTILINE)
    assert [float(lr) for lr in epoch_lrs] == [0.05, 0.025, pytest.approx(0.0167, abs=1e-4)]
    group = checkpoint(run.run_dir / "checkpoints" / "last.ckpt")["optimizer_states"][0]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 0.0001
    assert run.results["test"]["test/acc"] > 0.9


@pytest.mark.slow
def test_compiled_network_trains_and_saves_plain_weights(tmp_path: Path) -> None:
    run = ok(run_main(*MLP_SHORT, "--model.compile=true", cwd=tmp_path))
    assert run.results["test"]["test/acc"] > 0.9
    MLP(input_size=20, output_size=10, hidden_sizes=[256]).load_state_dict(
        torch.load(run.run_dir / "model.pth", weights_only=True)
    )


@pytest.mark.slow
def test_env_reports_versions_and_devices(tmp_path: Path) -> None:
    run = ok(run_main("env", cwd=tmp_path))
    assert torch.__version__ in run.stdout and "CUDA" in run.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_gpu_memory_fraction_is_checked_and_warns_on_cpu(tmp_path: Path) -> None:
    bad = run_main(*MLP_SHORT, "--gpu_memory_fraction=1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "gpu_memory_fraction must be in (0, 1], got 1.5" in bad.stderr
    assert "Traceback" not in bad.stderr
    cpu = ok(run_main(*MLP_SHORT, "--trainer.fast_dev_run=true", "--gpu_memory_fraction=0.5", cwd=tmp_path))
    assert "applies to CUDA GPUs only" in cpu.stderr


@pytest.fixture
def mnist_data(tmp_path: Path) -> DInterface:
    return DInterface(dataset="mnist", dataset_args={"root": str(write_mnist(tmp_path / "data"))}, batch_size=16)


def fit_recording_dtypes(model: MInterface, data: DInterface, seen: list, **trainer_args) -> pl.Trainer:
    """Fit, recording the dtype of the network's first linear layer's output at every training step."""

    class Hook(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            linear = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Linear))
            linear.register_forward_hook(lambda m, args, out: seen.append(out.dtype) if m.training else None)

    return fitted(model, data, callbacks=[Hook()], **trainer_args)


def test_bf16_mixed_precision_runs_the_network_in_bfloat16_on_cpu(mnist_data: DInterface) -> None:
    model = MInterface(net="mlp", loss="CrossEntropyLoss", optimizer="Adam", lr=3e-3)
    seen: list[torch.dtype] = []
    trainer = fit_recording_dtypes(model, mnist_data, seen, precision="bf16-mixed", max_epochs=3)
    assert seen and set(seen) == {torch.bfloat16}
    assert trainer.callback_metrics["train/acc"] > 0.8  # it still learns


def test_channels_last_conv_net(mnist_data: DInterface) -> None:
    model = MInterface(net="cnn", net_args={"channels": [8]}, loss="CrossEntropyLoss", channels_last=True)
    seen: list[bool] = []
    fitted(model, mnist_data, max_steps=2, limit_val_batches=1)
    conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    conv.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous(memory_format=CHANNELS_LAST)))
    model(torch.rand(2, 1, 28, 28))
    assert seen == [True]


def test_channels_last_needs_images() -> None:
    with pytest.raises(ConfigError, match="channels_last is for conv nets on images"):
        fitted(MInterface(channels_last=True), DInterface(), max_steps=1)


def test_compile_compiles_the_network_in_place() -> None:
    model = MInterface(net="mlp", net_args={"input_size": 4, "output_size": 2}, compile=True)
    assert model.net._compiled_call_impl is not None
    assert MInterface(net="mlp", net_args={"input_size": 4, "output_size": 2}).net._compiled_call_impl is None
