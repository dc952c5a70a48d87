"""Each logger Lightning ships that runs offline, and none: a run ends with results.json, and the logger's own files
hold the metrics and the hyperparameters. End to end through main.py, with the straight-line regression."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import Run, run_main
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training_controls import hparams_tab

from callbacks import LearnedParameters, PredictionsWriter, RunResults
from callbacks.results import report
from data.data_interface import DInterface
from model.model_interface import MInterface

pytestmark = pytest.mark.slow
SHORT = ("--model", "linear", "--trainer.max_epochs=20", "--trainer.enable_progress_bar=false")
# What results.json names each final metric under: the parts the loggers get as hp/<metric>.
PARTS = ("fit", "validation", "test")


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep W&B and MLflow off the network and out of the home folder, in main.py's processes too."""
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-home" / "cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home" / "config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-home" / "data"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }.items():
        monkeypatch.setenv(name, value)


def ok(run: Run) -> Run:
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def refused(run: Run, message: str) -> None:
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert message in run.stderr


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The metrics every logger gets at the end, by the name it gets them under."""
    metrics = {f"hp/{name}": value for part in PARTS for name, value in results[part].items()}
    # The validation of the best checkpoint after training replaces the last epoch's val/loss of `fit`.
    return {**metrics, "hp/val/loss": results["validation"]["val/loss"]}


def test_tensorboard_holds_the_final_metrics_beside_the_hyperparameters_and_resumes(tmp_path: Path) -> None:
    run = ok(run_main(*SHORT, cwd=tmp_path))
    assert run.run_dir == tmp_path / "runs" / "linear" / "version_0"
    assert "Open TensorBoard with: tensorboard --logdir runs/linear" in run.stdout
    events = EventAccumulator(str(run.run_dir))
    events.Reload()
    hparams, tags = hparams_tab(events)
    assert hparams["net"] == "linear" and hparams["dataset"] == "line" and hparams["lr"] == pytest.approx(0.01)
    final = final_metrics(run.results)
    assert {"hp/train/loss", "hp/val/loss", "hp/test/loss"} <= set(final) == set(tags)
    for tag, value in final.items():
        assert events.Scalars(tag)[-1].value == pytest.approx(value)
    resumed = ok(run_main(*SHORT, "--trainer.max_epochs=30", "--ckpt_path", "last", cwd=tmp_path))
    assert "Resuming version_0 from runs/linear/version_0/checkpoints/last.ckpt" in resumed.stdout
    assert resumed.run_dir == run.run_dir
    assert torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30


def test_csv_logger_alone_writes_metrics_and_hyperparameters_into_the_run_and_resumes(tmp_path: Path) -> None:
    run = ok(run_main(*SHORT, "--trainer.logger", "CSVLogger", cwd=tmp_path))
    # The default TensorBoard logger's save_dir and name carry over to the CSVLogger: runs/linear/version_N.
    assert run.run_dir == tmp_path / "runs" / "linear" / "version_0"
    assert "Metrics written to runs/linear/version_0/metrics.csv" in run.stdout and "tensorboard" not in run.stdout
    assert not list(run.run_dir.glob("events.out.tfevents.*"))
    hparams = yaml.safe_load((run.run_dir / "hparams.yaml").read_text())
    assert hparams["net"] == "linear" and hparams["dataset"] == "line" and hparams["lr"] == 0.01
    rows = list(csv.DictReader((run.run_dir / "metrics.csv").open()))
    # Validated every 10 epochs while training, then the best checkpoint once training ended.
    assert [int(row["epoch"]) for row in rows if row["val/loss"]] == [9, 19, 20]
    (row,) = [row for row in rows if row["hp/test/loss"]]
    for name, value in final_metrics(run.results).items():
        assert float(row[name]) == pytest.approx(value)
    again = ("--trainer.max_epochs=30", "--trainer.logger", "CSVLogger", "--ckpt_path", "last")
    resumed = ok(run_main(*SHORT, *again, cwd=tmp_path))
    assert "Resuming version_0 from" in resumed.stdout and resumed.run_dir == run.run_dir
    # Lightning's CSVLogger starts metrics.csv afresh in a run directory it finds: it holds the resumed part alone.
    rows = list(csv.DictReader((run.run_dir / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows if row["val/loss"]] == [29, 30]
    assert float([row for row in rows if row["hp/test/loss"]][-1]["hp/test/loss"]) == pytest.approx(
        resumed.results["test"]["test/loss"]
    )


def test_mlflow_with_a_local_store_holds_metrics_and_parameters(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    store = ("--trainer.logger", "MLFlowLogger", "--trainer.logger.tracking_uri", "sqlite:///runs/mlflow.db")
    run = ok(run_main(*SHORT, *store, "--trainer.logger.experiment_name", "linear", cwd=tmp_path))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    (found,) = client.search_runs([client.get_experiment_by_name("linear").experiment_id])
    # The folder that Lightning keeps an MLflow run's checkpoints in: default_root_dir/<experiment id>/<run id>.
    assert run.run_dir == tmp_path / "runs" / found.info.experiment_id / found.info.run_id
    assert f"MLflow run {found.info.run_id} in sqlite:///runs/mlflow.db" in run.stdout
    assert found.data.params["net"] == "linear" and float(found.data.params["lr"]) == 0.01
    for name, value in final_metrics(run.results).items():
        assert found.data.metrics[name] == pytest.approx(value)
    # Validated every 10 epochs while training, then the best checkpoint once training ended.
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val/loss")] == [9, 19, 20]
    # `last` and `best` name runs/<model>/version_N folders, which MLflow does not keep; a checkpoint's path and
    # the MLflow run's id resume it, in its folder.
    refused(run_main(*SHORT, *store, "--ckpt_path", "last", cwd=tmp_path), "--ckpt_path last")
    last = str(run.run_dir / "checkpoints" / "last.ckpt")
    again = ("--trainer.max_epochs=30", "--ckpt_path", last, "--trainer.logger.run_id", found.info.run_id)
    resumed = ok(run_main(*SHORT, *store, *again, cwd=tmp_path))
    assert resumed.run_dir == run.run_dir
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val/loss")] == [9, 19, 20, 29, 30]


def wandb_records(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The last value of each metric, and the config, that the offline W&B run file `path` holds. The file is a
    LevelDB-style log (W&B's own reader went into its compiled core): a 7-byte header, then records in 32 KiB blocks,
    each piece with a 7-byte header of checksum, length and kind (1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, position, piece = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    metrics: dict[str, Any] = {}
    config: dict[str, Any] = {}
    while position + 7 <= len(data):
        if (room := 32768 - position % 32768) < 7:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        piece += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(piece)
            piece = b""
            metrics.update({_key(item): json.loads(item.value_json) for item in record.history.item})
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
    return metrics, config


def _key(item: Any) -> str:
    """A W&B record item's name, which W&B keeps as a path of parts when the name has slashes."""
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_holds_metrics_and_config(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    offline = ("--trainer.logger", "WandbLogger", "--trainer.logger.offline=true", "--trainer.logger.project=linear")
    run = ok(run_main(*SHORT, *offline, cwd=tmp_path))
    # The folder that Lightning keeps a W&B run's checkpoints in: save_dir/<project>/<run id>.
    run_id = run.run_dir.name
    assert [path.name for path in (tmp_path / "runs" / "linear").iterdir()] == [run_id]  # no stray folder
    (log,) = (tmp_path / "runs" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    assert f"upload it with: wandb sync runs/wandb/{log.parent.name}" in run.stdout
    metrics, config = wandb_records(log)
    assert config["net"] == "linear" and config["dataset"] == "line" and config["lr"] == 0.01
    for name, value in final_metrics(run.results).items():
        assert metrics[name] == pytest.approx(value)
    # As MLflow: the checkpoint's path and the W&B run's id resume it, in its folder.
    refused(run_main(*SHORT, *offline, "--ckpt_path", "last", cwd=tmp_path), "--ckpt_path last")
    last = str(run.run_dir / "checkpoints" / "last.ckpt")
    again = ("--trainer.max_epochs=30", "--ckpt_path", last, "--trainer.logger.id", run_id)
    resumed = ok(run_main(*SHORT, *offline, *again, cwd=tmp_path))
    assert resumed.run_dir == run.run_dir
    assert torch.load(last, weights_only=True)["global_step"] == 30


def test_no_logger_writes_the_run_into_the_runs_folder(tmp_path: Path) -> None:
    run = ok(run_main(*SHORT, "--trainer.logger=false", cwd=tmp_path))
    assert run.run_dir == tmp_path / "runs"  # default_root_dir, which one run without a logger holds
    assert run.stdout.splitlines()[-1] == "Run written to runs"
    assert set(PARTS) <= set(run.results) and (run.run_dir / "model.pth").is_file()
    assert (run.run_dir / "checkpoints" / "last.ckpt").is_file()
    refused(run_main(*SHORT, "--trainer.logger=false", "--ckpt_path", "last", cwd=tmp_path), "--ckpt_path last")
    refused(run_main(*SHORT, "--trainer.logger=false", cwd=tmp_path), "runs/config.yaml exists: runs holds a run")


def test_two_loggers_share_the_run_directory(tmp_path: Path) -> None:
    both = (
        "[{class_path: TensorBoardLogger, init_args: {save_dir: runs, name: linear, default_hp_metric: false}},"
        " {class_path: CSVLogger, init_args: {save_dir: runs, name: linear}}]"
    )
    run = ok(run_main(*SHORT, "--trainer.logger", both, cwd=tmp_path))
    assert run.run_dir == tmp_path / "runs" / "linear" / "version_0"
    assert "Open TensorBoard with: tensorboard --logdir runs/linear" in run.stdout
    assert "Metrics written to runs/linear/version_0/metrics.csv" in run.stdout
    final = final_metrics(run.results)
    events = EventAccumulator(str(run.run_dir))
    events.Reload()
    assert set(hparams_tab(events)[1]) == set(final)
    (row,) = [row for row in csv.DictReader((run.run_dir / "metrics.csv").open()) if row["hp/test/loss"]]
    assert {name: float(row[name]) for name in final} == pytest.approx(final)
    assert yaml.safe_load((run.run_dir / "hparams.yaml").read_text())["net"] == "linear"
    resumed = ok(
        run_main(*SHORT, "--trainer.logger", both, "--ckpt_path", "last", "--trainer.max_epochs=30", cwd=tmp_path)
    )
    assert "Metrics written to runs/linear/version_0/metrics.csv" in resumed.stdout  # both loggers go on in version_0
    assert sorted(path.name for path in (tmp_path / "runs" / "linear").iterdir()) == ["version_0"]


def test_predict_from_a_checkpoint_writes_predictions_under_a_csv_logger(tmp_path: Path) -> None:
    trained = ok(run_main(*SHORT, "--trainer.logger", "CSVLogger", cwd=tmp_path))
    last = str(trained.run_dir / "checkpoints" / "last.ckpt")
    predict = ok(run_main("predict", "--ckpt_path", last, "--trainer.logger", "CSVLogger", cwd=tmp_path))
    assert predict.run_dir == tmp_path / "runs" / "linear" / "version_1"
    rows = list(csv.DictReader((predict.run_dir / "predictions.csv").open()))
    assert [row["id"] for row in rows] == [str(i) for i in range(10)]  # the 10 points of the test split
    assert predict.results["num_predictions"] == 10
    assert predict.results["predictions"] == "runs/linear/version_1/predictions.csv"


def test_results_start_afresh_with_a_fit_and_add_up_across_processes(tmp_path: Path) -> None:
    """In one process, with the callbacks on a plain Trainer: a fit's results are written with the validation after
    it, a test by another process (a new RunResults, as under ddp_spawn) adds to them, and a fit resumed in the same
    directory drops what the earlier run evaluated."""

    def trainer(**kwargs: Any) -> pl.Trainer:
        checkpoint = ModelCheckpoint(monitor="val/loss", save_last=True)
        logger = CSVLogger(tmp_path, name="line", version=0)
        return pl.Trainer(
            logger=logger, callbacks=[RunResults(), LearnedParameters(), PredictionsWriter(), checkpoint],
            enable_progress_bar=False, enable_model_summary=False, **kwargs,
        )  # fmt: skip

    model, data = MInterface(net="linear", lr=0.1), DInterface(dataset="line")
    results = tmp_path / "line" / "version_0" / "results.json"
    first = trainer(max_epochs=3)
    first.fit(model, datamodule=data)
    assert not results.exists()  # the fit's results wait for the evaluation after it
    first.validate(model, datamodule=data, ckpt_path="best", verbose=False)
    written = json.loads(results.read_text())
    assert {"fit", "best_checkpoint", "validation", "checkpoint", "state_dict", "parameters"} <= set(written)
    assert written["true_parameters"] == {"weight": 0.7, "bias": 0.3}
    other = trainer()
    other.test(model, datamodule=data, ckpt_path=written["best_checkpoint"], verbose=False)
    report(other)
    tested = json.loads(results.read_text())
    assert tested["fit"] == written["fit"] and "test/loss" in tested["test"]
    net = MInterface.load_from_checkpoint(written["best_checkpoint"]).net
    assert torch.load(tested["state_dict"], weights_only=True).keys() == net.state_dict().keys()
    resumed = trainer(max_epochs=5)
    resumed.fit(model, datamodule=data, ckpt_path=str(tmp_path / "line" / "version_0" / "checkpoints" / "last.ckpt"))
    resumed.validate(model, datamodule=data, verbose=False)
    again = json.loads(results.read_text())
    assert "test" not in again and again["checkpoint"] is None and again["fit"] != written["fit"]


def test_a_logger_of_ones_own_gets_the_metrics_and_hyperparameters(project_copy: Path, tmp_path: Path) -> None:
    (project_copy / "loggers.py").write_text(
        '''"""A logger that keeps what it is given in a JSON file, as a user's own logger might."""

import json
from pathlib import Path

from lightning.pytorch.loggers import Logger


class JSONLogger(Logger):
    def __init__(self, save_dir: str = "runs", name: str = "json") -> None:
        super().__init__()
        self._save_dir, self._name, self.kept = save_dir, name, {"params": {}, "metrics": {}}

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.kept["params"].update({key: str(value) for key, value in dict(params).items()})

    def log_metrics(self, metrics, step=None) -> None:
        self.kept["metrics"].update({key: float(value) for key, value in metrics.items()})

    def save(self) -> None:
        path = Path(self._save_dir, self._name, "logged.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.kept))
'''
    )
    run = ok(run_main(*SHORT, "--trainer.logger", "loggers.JSONLogger", cwd=tmp_path, root=project_copy))
    # jsonargparse carries save_dir and name over from the default logger: runs/<model>/version_<its version>.
    assert run.run_dir == tmp_path / "runs" / "linear" / "version_0"
    kept = json.loads((tmp_path / "runs" / "linear" / "logged.json").read_text())
    assert kept["metrics"]["hp/test/loss"] == pytest.approx(run.results["test"]["test/loss"])
    assert kept["params"]["net"] == "linear" and kept["params"]["lr"] == "0.01"
