"""Many runs as one experiment: k-fold cross-validation's folds, and experiments.py's `cv`, `repeat`, `aggregate`."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from conftest import run_main, write_mnist
from torch.utils.data import Dataset, Subset

import experiments
from callbacks.run_directory import lock_run
from data.data_interface import DInterface
from trust import load_yaml_file
from utils import ConfigError

SYNTHETIC = {"num_samples": 103, "num_classes": 4}
# A run of seconds: the embedded synthetic data, small, one epoch.
TINY = ["--trainer.max_epochs", "1", "--data.dataset_args.num_samples", "240", "--trainer.enable_progress_bar", "false"]
CV = ["cv", "--model", "mlp", "--data.num_folds", "3", *TINY]


def folds(k: int, split_seed: int = 42, **kwargs) -> list[DInterface]:
    """The data module of each fold of `k`, set up."""
    modules = []
    for fold in range(k):
        data = DInterface(num_folds=k, fold=fold, split_seed=split_seed, **kwargs)
        data.setup("fit")
        modules.append(data)
    return modules


def items(split: Dataset) -> list[int]:
    """The indices in the dataset of a split's items (image splits wrap theirs in a TransformedDataset)."""
    return list(split.indices if isinstance(split, Subset) else split.dataset.indices)


def val_items(modules: list[DInterface]) -> list[list[int]]:
    return [sorted(items(data.val_set)) for data in modules]


@pytest.mark.parametrize("source", ["synthetic", "mnist"])
def test_folds_partition_the_training_data_stratified(source: str, tmp_path: Path) -> None:
    if source == "synthetic":
        kwargs = {"dataset": "synthetic", "dataset_args": SYNTHETIC, "val_fraction": 0.1}
    else:  # a dataset with a test split of its own
        kwargs = {"dataset": "mnist", "dataset_args": {"root": str(write_mnist(tmp_path, n_train=61))}}
    plain = DInterface(**kwargs)
    plain.setup("fit")
    pool = sorted([*items(plain.train_set), *items(plain.val_set)])
    modules = folds(5, **kwargs)
    validation = val_items(modules)
    # Nothing lost, no item in two folds: the validation folds together are the training data.
    assert sorted(i for fold in validation for i in fold) == pool
    assert max(map(len, validation)) - min(map(len, validation)) <= 1
    labels = torch.as_tensor(plain.dataset.targets)
    for data, fold in zip(modules, validation, strict=True):
        assert sorted([*items(data.train_set), *fold]) == pool
        assert not set(items(data.train_set)) & set(fold)
        # The test split is the one of the run without folds.
        assert data.test_set is not None and len(data.test_set) == len(plain.test_set)
        if source == "synthetic":
            assert items(data.test_set) == items(plain.test_set)
    # Stratified: each class's items are spread over the folds to within one.
    counts = torch.stack([torch.bincount(labels[fold], minlength=len(plain.classes)) for fold in validation])
    assert (counts.max(dim=0).values - counts.min(dim=0).values).max() <= 1


def test_folds_of_a_regression_dataset() -> None:
    """The straight-line regression has no classes: its folds are dealt unstratified, sizes within one."""
    plain = DInterface("line")
    plain.setup("fit")
    validation = val_items(folds(4, dataset="line"))
    assert sorted(i for fold in validation for i in fold) == sorted([*items(plain.train_set), *items(plain.val_set)])
    assert max(map(len, validation)) - min(map(len, validation)) <= 1


def test_folds_follow_split_seed_alone() -> None:
    kwargs = {"dataset": "synthetic", "dataset_args": SYNTHETIC}
    torch.manual_seed(0)
    first = val_items(folds(3, **kwargs))
    torch.manual_seed(1)  # another training seed
    assert val_items(folds(3, **kwargs)) == first
    assert val_items(folds(3, split_seed=7, **kwargs)) != first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_folds": 1, "fold": 0}, "data.num_folds must be >= 2"),
        ({"num_folds": 3, "fold": 3}, "data.fold must be one of 0 to 2"),
        ({"num_folds": 3}, "data.fold must be one of 0 to 2"),
        ({"fold": 1}, "data.fold 1 needs data.num_folds"),
    ],
)
def test_fold_options_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DInterface(dataset="synthetic", **kwargs)


def test_more_folds_than_items_is_an_error() -> None:
    data = DInterface("synthetic", {"num_samples": 10, "num_classes": 2}, num_folds=9, fold=0)
    with pytest.raises(ConfigError, match="has 8 items, fewer than the folds"):
        data.setup("fit")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["repeat", "--model", "mlp"], "the following arguments are required: --seeds"),
        (["cv", "--model", "mlp", "--data.num_folds", "x"], "invalid int value: 'x'"),
        (["cv", "--model", "mlp", "--data.num_folds", "1"], "--data.num_folds must be >= 2"),
        (["cv", "--data.num_folds", "3", "--data.fold", "1"], "--data.fold: cv sets it for each run"),
        (["repeat", "--seeds", "1", "1"], "a seed is given twice"),
        (["aggregate", "nowhere"], "nowhere: no such folder"),
    ],
)
def test_bad_options_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert experiments.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_aggregate_a_plain_folder_of_runs(tmp_path: Path) -> None:
    """A folder of runs without experiment.json (runs/<model>/version_N): those with results are averaged, those
    without are named under the table, a metric that one run lacks is named and left out."""
    runs = {"version_0": (0.001, 0.5, 0.25), "version_1": (0.01, 0.75, 0.5), "version_2": (0.1, None, None)}
    for name, (lr, acc, loss) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"model:\n  lr: {lr}\ntrainer:\n  max_epochs: 3\n")
        if acc is not None:
            results = {"validation": {"val/acc": acc}, "test": {"test/acc": acc, "test/loss": loss}}
            if name == "version_1":
                results["fit"] = {"val/acc_best": acc}
            (tmp_path / name / "results.json").write_text(json.dumps(results))
    table = experiments.aggregate(tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["runs"] == ["version_0", "version_1"]
    assert summary["runs_without_results"] == ["version_2"]
    assert summary["left_out"] == {"fit val/acc_best": ["version_0"]}
    assert summary["metrics"]["test test/acc"] == {
        "mean": 0.625,
        "std": pytest.approx(0.25 / 2**0.5),  # sample std of 0.5 and 0.75
        "values": {"version_0": 0.5, "version_1": 0.75},
    }
    assert summary["config_differs"] == {"model.lr": {"version_0": 0.001, "version_1": 0.01}}
    assert "| test test/acc | 0.625 | 0.1768 | 0.5 | 0.75 |" in table
    assert "Runs without results, not included: version_2." in table
    assert table == (tmp_path / "results.md").read_text()


def test_aggregate_names_the_missing_fold_of_folds_run_as_separate_jobs(tmp_path: Path) -> None:
    """Folds run as an array job (`fit --data.num_folds 3 --data.fold I`, each into runs/<model>/version_N): the
    folder has no experiment.json, and the configs tell which folds there should be."""
    for fold in (0, 2):
        run = tmp_path / f"version_{fold}"
        run.mkdir()
        (run / "config.yaml").write_text(f"data:\n  num_folds: 3\n  fold: {fold}\n")
        (run / "results.json").write_text(
            json.dumps({"validation": {"val/loss": 1.0}, "test": {"test/acc": 0.5 + fold / 10}})
        )
    with pytest.raises(ConfigError, match=r": fold 1 of 3 has no run with results, so nothing is averaged$"):
        experiments.aggregate(tmp_path)
    (tmp_path / "version_1").mkdir()
    (tmp_path / "version_1" / "config.yaml").write_text("data:\n  num_folds: 3\n  fold: 1\n")
    (tmp_path / "version_1" / "results.json").write_text(
        json.dumps({"validation": {"val/loss": 1.0}, "test": {"test/acc": 0.6}})
    )
    experiments.aggregate(tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["metrics"]["test test/acc"]["mean"] == pytest.approx(0.6)


def test_aggregate_of_a_diverged_run_gives_nan_and_a_bad_value_is_named(tmp_path: Path) -> None:
    for name, loss in (("seed_0", 0.5), ("seed_1", "nan")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("seed_everything: 0\n")
        (tmp_path / name / "results.json").write_text(json.dumps({"validation": {"val/loss": loss}, "test": {}}))
    (tmp_path / "seed_0" / "config.yaml").write_text("test_after_fit: false\n")
    (tmp_path / "seed_1" / "config.yaml").write_text("test_after_fit: false\n")
    experiments.aggregate(tmp_path)
    row = json.loads((tmp_path / "results.json").read_text())["metrics"]["validation val/loss"]
    assert row["mean"] == "nan" and row["std"] == "nan" and row["values"] == {"seed_0": 0.5, "seed_1": "nan"}
    (tmp_path / "seed_1" / "results.json").write_text(json.dumps({"validation": {"val/loss": "x"}}))
    with pytest.raises(ConfigError, match=r"seed_1/results.json: val/loss is \"x\", not a number"):
        experiments.aggregate(tmp_path)


def test_a_run_stopped_during_its_test_is_not_finished(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("test_after_fit: true\n")
    (tmp_path / "results.json").write_text(json.dumps({"fit": {"val/loss": 1.0}, "validation": {"val/loss": 1.0}}))
    assert not experiments.finished(tmp_path)
    (tmp_path / "config.yaml").write_text("test_after_fit: false\n")
    assert experiments.finished(tmp_path)


# --- end to end, in subprocesses -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of `python main.py cv --model mlp --data.num_folds 3`, run once."""
    cwd = tmp_path_factory.mktemp("cv")
    run = run_main(*CV, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| test test/acc |" in run.stdout  # the table, printed
    return cwd


def copy_of(cwd: Path, tmp_path: Path) -> Path:
    """A copy of a working directory with its runs, to change without touching the module's."""
    return Path(shutil.copytree(cwd, tmp_path / "copy"))


@pytest.mark.slow
def test_cv_writes_three_runs_and_their_table(cv_folder: Path) -> None:
    folder = cv_folder / "runs" / "mlp" / "cv3"
    runs = [folder / f"fold_{i}" for i in range(3)]
    for i, run in enumerate(runs):
        assert load_yaml_file(run / "config.yaml")["data"]["fold"] == i
        assert (run / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((folder / "results.json").read_text())
    assert summary["runs"] == ["fold_0", "fold_1", "fold_2"]
    assert summary["config_differs"] == {"data.fold": {"fold_0": 0, "fold_1": 1, "fold_2": 2}}
    for part, metric in (("test", "test/acc"), ("validation", "val/loss"), ("fit", "val/acc_best")):
        values = [json.loads((run / "results.json").read_text())[part][metric] for run in runs]
        row = summary["metrics"][f"{part} {metric}"]
        assert list(row["values"].values()) == values
        assert row["mean"] == pytest.approx(statistics.fmean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values))
    table = (folder / "results.md").read_text()
    assert "sample standard deviation (ddof=1)" in table and "| data.fold | 0 | 1 | 2 |" in table
    csv_rows = (folder / "results.csv").read_text().splitlines()
    assert csv_rows[0] == "metric,mean,std_ddof1,fold_0,fold_1,fold_2"
    test_acc = next(row for row in csv_rows if row.startswith("test test/acc,")).split(",")
    assert float(test_acc[1]) == pytest.approx(summary["metrics"]["test test/acc"]["mean"])


@pytest.mark.slow
def test_cv_again_trains_only_the_fold_without_results(cv_folder: Path, tmp_path: Path) -> None:
    cwd = copy_of(cv_folder, tmp_path)
    folder = cwd / "runs" / "mlp" / "cv3"
    (folder / "fold_1" / "results.json").unlink()  # fold 1 stopped after training, before its results
    (folder / "fold_2" / "results.json").unlink()  # fold 2 stopped before its first checkpoint
    shutil.rmtree(folder / "fold_2" / "checkpoints")
    finished = (folder / "fold_0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    run = run_main(*CV, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cv fold_0 (1/3): has its results already" in run.stdout
    assert "--ckpt_path runs/mlp/cv3/fold_1/checkpoints/last.ckpt" in run.stdout
    assert (folder / "fold_0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == finished
    assert all((folder / f"fold_{i}" / "results.json").is_file() for i in range(3))
    assert "fold_2 holds no checkpoint to resume, set aside as runs/mlp/cv3/fold_2.stopped" in run.stdout
    assert (folder / "fold_2.stopped" / "config.yaml").is_file()
    summary = json.loads((folder / "results.json").read_text())
    assert {"validation val/acc", "test test/acc"} <= set(summary["metrics"])
    # Fold 1's resumed fit had no epoch left, so logged no metrics of its own: named, not averaged over two folds.
    assert "fit val/loss" in summary["left_out"]
    assert all(metric.startswith("fit ") and runs == ["fold_1"] for metric, runs in summary["left_out"].items())
    assert summary["config_differs"]["ckpt_path"]["fold_1"] == "runs/mlp/cv3/fold_1/checkpoints/last.ckpt"
    assert "Left out, as not every run has them: fit train/acc (missing from fold_1)" in run.stdout


@pytest.mark.slow
def test_cv_stops_at_a_failed_fold(cv_folder: Path, tmp_path: Path) -> None:
    cwd = copy_of(cv_folder, tmp_path)
    folder = cwd / "runs" / "mlp" / "cv3"
    (folder / "fold_1" / "results.json").unlink()
    shutil.rmtree(folder / "fold_2")
    held = lock_run(folder / "fold_1")  # another process trains fold 1: its resume is refused
    try:
        run = run_main(*CV, cwd=cwd)
    finally:
        held.close()
    assert run.returncode == 1
    assert "error: cv fold_1 failed (exit status 2" in run.stderr
    assert "runs with results (fold_0) are kept" in run.stderr
    assert not (folder / "fold_2").exists()  # not started after the failure


@pytest.mark.slow
def test_aggregate_names_a_missing_fold(cv_folder: Path, tmp_path: Path) -> None:
    cwd = copy_of(cv_folder, tmp_path)
    folder = cwd / "runs" / "mlp" / "cv3"
    (folder / "fold_2" / "results.json").unlink()
    (folder / "results.json").unlink()
    run = run_main("aggregate", "runs/mlp/cv3", cwd=cwd)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "fold_2 (no results.json: it failed" in run.stderr
    assert "1 of the 3 runs" in run.stderr
    assert not (folder / "results.json").exists()  # nothing averaged over the two others


@pytest.mark.slow
def test_aggregate_without_experiment_file_and_ensemble(cv_folder: Path, tmp_path: Path) -> None:
    cwd = copy_of(cv_folder, tmp_path)
    folder = cwd / "runs" / "mlp" / "cv3"
    (folder / "experiment.json").unlink()  # a plain folder of runs
    run = run_main("aggregate", "runs/mlp/cv3", "--ensemble", cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((folder / "results.json").read_text())
    assert summary["runs"] == ["fold_0", "fold_1", "fold_2"]
    ensemble = summary["ensemble"]
    assert 0 <= ensemble["test/acc"] <= 1 and ensemble["test/loss"] > 0
    assert "Ensemble of the 3 runs" in run.stdout


@pytest.mark.slow
def test_repeat_changes_the_seed_not_the_split(tmp_path: Path) -> None:
    run = run_main("repeat", "--model", "mlp", "--seeds", "0", "1", *TINY, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "runs" / "mlp" / "seeds"
    summary = json.loads((folder / "results.json").read_text())
    assert summary["config_differs"] == {"seed_everything": {"seed_0": 0, "seed_1": 1}}
    losses = summary["metrics"]["test test/loss"]["values"]
    assert losses["seed_0"] != losses["seed_1"]
    splits = []
    for seed in (0, 1):
        data = DInterface(**load_yaml_file(folder / f"seed_{seed}" / "config.yaml")["data"])
        data.setup("fit")
        splits.append([items(getattr(data, f"{split}_set")) for split in ("train", "val", "test")])
    assert splits[0] == splits[1]
