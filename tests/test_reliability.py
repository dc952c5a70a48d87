"""Crash and resume, checkpoints of other models, crafted checkpoints, and bad input: one clear message each."""

from __future__ import annotations

import csv
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, Run, run_main

from data.data_interface import DInterface
from model.linear import LinearRegressionModel
from model.model_interface import MInterface

pytestmark = pytest.mark.slow

RESUMABLE = (
    "--model", "mlp", "--trainer.max_epochs=4", "--data.batch_size=8", "--trainer.deterministic=true",
    "--trainer.enable_progress_bar=false",
)  # fmt: skip


# Lines reach the test as they are printed, so that a signal lands while the epoch named trains.
UNBUFFERED = {**os.environ, "PYTHONUNBUFFERED": "1"}


def ok(run: Run) -> Run:
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def kill_during_epoch(cwd: Path, epoch: int) -> None:
    """Start the run and SIGKILL it while epoch `epoch` (1-based) trains, as a crash or a lost machine would."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *RESUMABLE], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=UNBUFFERED,
    )  # fmt: skip
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch - 1}/"):  # printed as epoch `epoch` starts
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_resumes_with_ckpt_path_last_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    whole.mkdir()
    crashed.mkdir()
    uninterrupted = ok(run_main(*RESUMABLE, cwd=whole))
    kill_during_epoch(crashed, epoch=3)
    run_dir = crashed / "runs" / "mlp" / "version_0"
    assert not (run_dir / "results.json").exists() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    resumed = ok(run_main(*RESUMABLE, "--ckpt_path", "last", cwd=crashed))
    assert "Resuming version_0 from runs/mlp/version_0/checkpoints/last.ckpt" in resumed.stdout
    assert resumed.run_dir == run_dir and not (crashed / "runs" / "mlp" / "version_1").exists()
    expected = torch.load(uninterrupted.run_dir / "model.pth", weights_only=True)
    got = torch.load(run_dir / "model.pth", weights_only=True)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert resumed.results["test"] == uninterrupted.results["test"]
    assert resumed.results["fit"]["val/acc_best"] == uninterrupted.results["fit"]["val/acc_best"]


def test_best_and_last_name_the_latest_runs_checkpoints_and_predict_writes_a_csv(tmp_path: Path) -> None:
    trained = ok(run_main("--model", "mlp", "--trainer.max_epochs=2", cwd=tmp_path))
    test = ok(run_main("test", "--model", "mlp", "--ckpt_path", "best", cwd=tmp_path))
    assert test.results["test"] == trained.results["test"]  # after fit, the best checkpoint was tested too
    predict = ok(run_main("predict", "--model", "mlp", "--ckpt_path", "best", cwd=tmp_path))
    rows = list(csv.DictReader((predict.run_dir / "predictions.csv").open()))
    data = DInterface(**yaml.safe_load((trained.run_dir / "config.yaml").read_text())["data"])
    data.setup("predict")
    assert len(rows) == len(data.test_set) == 800
    assert all(row["class"] == data.classes[int(row["prediction"])] for row in rows)
    assert all(0.1 <= float(row["probability"]) <= 1 for row in rows)  # the top one of 10 classes
    # The ids are the items' indices in the dataset: their labels give back the test accuracy.
    correct = sum(int(row["prediction"]) == data.dataset[int(row["id"])][1] for row in rows)
    assert correct / len(rows) == pytest.approx(trained.results["test"]["test/acc"], abs=1e-6)


def test_a_diverging_loss_stops_at_once_naming_the_step_and_keeps_finite_weights(tmp_path: Path) -> None:
    run = run_main("--model", "mlp", "--model.optimizer=SGD", "--model.lr=1e12", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    step = int(re.search(r"the training loss became (?:nan|inf) at step (\d+)", run.stderr)[1])
    assert "lower the learning rate (now model.lr=1e+12)" in run.stderr
    last = torch.load(tmp_path / "runs/mlp/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == step
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())


def test_ctrl_c_keeps_a_checkpoint_to_resume_from(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *RESUMABLE], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=UNBUFFERED,
    )  # fmt: skip
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGINT)
            break
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "resume with --ckpt_path last" in output
    last = torch.load(tmp_path / "runs/mlp/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] >= 350  # at least the first epoch's 350 steps
    resumed = ok(run_main(*RESUMABLE, "--ckpt_path", "last", cwd=tmp_path))
    assert "Trained 4 epochs (1,400 steps)" in resumed.stdout
    # The same command in a fresh directory, as a re-queued job's first start, begins a new run.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    started = ok(run_main(*RESUMABLE, "--trainer.max_epochs=1", "--ckpt_path", "last", cwd=fresh))
    assert "No run under runs/mlp to resume: starting a new one" in started.stdout


def test_export_command_writes_files_that_give_the_checkpoints_outputs(tmp_path: Path, line_run: Run) -> None:
    ckpt = line_run.run_dir / "checkpoints" / "last.ckpt"
    run = ok(run_main("export", "--ckpt_path", str(ckpt), "--out_dir", "exported", "--formats", "state_dict",
                      "torchscript", cwd=tmp_path))  # fmt: skip
    net = LinearRegressionModel()
    net.load_state_dict(torch.load(tmp_path / "exported/model.pth", weights_only=True))
    scripted = torch.jit.load(tmp_path / "exported/model.torchscript.pt")
    x = torch.rand(7, 1)
    expected = MInterface.load_from_checkpoint(ckpt).eval().net(x)
    torch.testing.assert_close(net(x), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(scripted(x), expected, atol=1e-6, rtol=0)
    assert "model.pth" in run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "mlp", "--ckpt_path", "nope.ckpt"), "--ckpt_path nope.ckpt: no such file"),
        (("test", "--model", "mlp", "--ckpt_path", "last"), "--ckpt_path last: no run under runs/mlp has a checkpoint"),
        (("--model", "mlp", "--model.lr=-0.1"), "model.lr must be > 0, got -0.1"),
        (("--model", "mlp", "--data.batch_size=0"), "data.batch_size must be >= 1"),
        (("--model", "mlp", "--data.val_fraction=0.5", "--data.test_fraction=0.6"), "data.test_fraction must be"),
        (("--model", "mlp", "--data.batch_size=many"), 'Parser key "data.batch_size"'),
        (("--model", "mpl"), "did you mean mlp?"),
        (("--model", "mlp", "--config", "nowhere.yaml"), "nowhere.yaml"),
        (("--model", "mlp", "--trainer.accelerator=gpu"), "this machine has no CUDA GPU that torch can use"),
        (
            ("--model", "mlp", "--trainer.callbacks+=callbacks.GPUMemoryFraction", "--trainer.callbacks.fraction=1.5"),
            "gpu_memory_fraction must be in (0, 1], got 1.5",
        ),
        (("--model", "mlp", "--data", "mnist", "--data.root", "no_such_dir"), "no_such_dir"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    run = run_main(*args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_malformed_yaml_is_one_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  net: mlp\n lr: [0.1\n")
    run = run_main("fit", "--config", str(config), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "broken.yaml is not valid YAML at line 3, column 2" in run.stderr


def test_checkpoint_of_another_model_is_named(tmp_path: Path, line_run: Run) -> None:
    ckpt = str(line_run.run_dir / "checkpoints" / "last.ckpt")
    run = run_main("test", "--model", "mlp", "--ckpt_path", ckpt, cwd=tmp_path)
    assert run.returncode == 2 and "holds a checkpoint of model 'linear', not 'mlp'" in run.stderr
    assert "Traceback" not in run.stderr


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped, raw = tmp_path / "zipped.ckpt", tmp_path / "raw.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, zipped)  # torch.save's format
    raw.write_bytes(pickle.dumps({"state_dict": {}, "hyper_parameters": Payload(marker)}))  # any other
    for crafted, refusal in ((zipped, "does not load with weights-only unpickling"), (raw, "is not the zip archive")):
        for args in (("test", "--ckpt_path", str(crafted)), ("--model", "mlp", "--ckpt_path", str(crafted))):
            run = run_main(*args, cwd=tmp_path)
            assert run.returncode == 2 and f"refused, it {refusal}" in run.stderr, run.stderr[-2000:]
            assert "Traceback" not in run.stderr
    assert not marker.exists()
