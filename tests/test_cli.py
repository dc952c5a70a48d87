"""The command line, end to end in subprocesses: what `python main.py ...` does for a user."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, Run, run_main

pytestmark = pytest.mark.slow
SHORT = ("--trainer.max_epochs=20",)


def test_shorthand_learns_the_line(line_run: Run) -> None:
    results = line_run.results
    weight, bias = results["parameters"]["weight"][0], results["parameters"]["bias"][0]
    assert abs(weight - 0.7) < 0.01 and abs(bias - 0.3) < 0.01, (weight, bias)
    assert results["true_parameters"] == {"weight": 0.7, "bias": 0.3}
    assert results["test"]["test/loss"] < 0.01
    assert results["validation"]["val/loss"] < 0.01
    assert "learned weight: 0.70" in line_run.stdout and "(true: 0.7)" in line_run.stdout


def test_run_directory_holds_everything(line_run: Run) -> None:
    run_dir = line_run.run_dir
    assert run_dir.parent == line_run.cwd / "runs" / "linear"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["net"] == "linear" and config["trainer"]["max_epochs"] == 1000
    # The atomic checkpoint plugin is recorded, so the config re-runs as it ran, and warns about nothing.
    assert config["trainer"]["plugins"] == [{"class_path": "callbacks.AtomicCheckpointIO"}]
    assert "Unable to serialize" not in line_run.stderr
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    best = Path(line_run.results["best_checkpoint"])
    assert best.name.startswith("best-epoch=") and (line_run.cwd / best).is_file()
    assert (run_dir / "predictions.png").stat().st_size > 10_000
    assert (run_dir / "model.pth").is_file()


def test_full_form_overrides_config_and_later_args_win(tmp_path: Path) -> None:
    run = run_main(
        "fit",
        "--config",
        str(ROOT / "configs/linear.yaml"),
        "--trainer.max_epochs=50",
        "--trainer.max_epochs=7",
        "--model.lr=0.1",
        "--data.batch_size=8",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 7
    assert config["model"]["lr"] == 0.1 and config["data"]["batch_size"] == 8
    checkpoint = torch.load(run.run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 7 * 4  # 32 training points in batches of 8: 4 steps an epoch


def test_repeated_runs_get_their_own_directories(tmp_path: Path) -> None:
    first, second = (run_main("--model", "linear", *SHORT, cwd=tmp_path) for _ in range(2))
    assert first.returncode == second.returncode == 0, second.stderr[-3000:]
    assert first.run_dir != second.run_dir
    assert (first.run_dir / "config.yaml").is_file() and (second.run_dir / "config.yaml").is_file()


def test_optimizer_from_the_command_line(tmp_path: Path) -> None:
    run = run_main("--model", "linear", *SHORT, "--optimizer", "Adam", "--model.lr", "0.05", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    state = torch.load(run.run_dir / "checkpoints/last.ckpt", weights_only=True)["optimizer_states"][0]
    assert state["param_groups"][0]["initial_lr"] == 0.05  # where the config's cosine schedule started
    assert "exp_avg" in state["state"][0]  # Adam's moment estimates: not SGD


def test_test_after_fit_can_be_switched_off(tmp_path: Path) -> None:
    run = run_main("--model", "linear", *SHORT, "--test_after_fit=false", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test" not in run.results and "val/loss" in run.results["validation"]


def test_early_stopping_settings_and_off(tmp_path: Path) -> None:
    stopped = run_main(
        "--model",
        "linear",
        "--trainer.check_val_every_n_epoch=1",
        "--early_stopping.patience=1",
        "--early_stopping.min_delta=1.0",
        cwd=tmp_path,
    )
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert torch.load(stopped.run_dir / "checkpoints/last.ckpt", weights_only=True)["epoch"] < 5
    off = run_main("--model", "linear", *SHORT, "--early_stopping=null", "--lr_monitor=null", cwd=tmp_path)
    assert off.returncode == 0, off.stderr[-3000:]
    assert yaml.safe_load((off.run_dir / "config.yaml").read_text())["early_stopping"] is None


def test_validate_test_predict_from_checkpoint(line_run: Run, tmp_path: Path) -> None:
    ckpt = str(line_run.run_dir / "checkpoints/last.ckpt")
    config = str(ROOT / "configs/linear.yaml")
    test = run_main("test", "--config", config, "--ckpt_path", ckpt, cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert test.results["test"]["test/loss"] < 0.01
    assert (test.run_dir / "predictions.png").is_file()
    # With no config, the model is the checkpoint's own.
    validate = run_main("validate", "--ckpt_path", ckpt, cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert validate.results["validation"]["val/loss"] < 0.01
    predict = run_main("predict", "--config", config, "--ckpt_path", ckpt, cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    rows = list(csv.DictReader((predict.run_dir / "predictions.csv").open()))
    assert [row["id"] for row in rows] == [str(i) for i in range(10)]  # the 10 points of the test split
    predictions = torch.tensor([float(row["prediction"]) for row in rows])
    expected = 0.7 * torch.arange(0.8, 1.0, 0.02) + 0.3
    torch.testing.assert_close(predictions, expected, atol=0.01, rtol=0)


def test_help_and_print_config_show_the_chosen_classes_arguments(tmp_path: Path) -> None:
    help_text = run_main("--model", "linear", "--help", cwd=tmp_path).stdout
    assert "--data.dataset_args.weight" in help_text and "True slope" in help_text
    printed = run_main("--model", "linear", "--data.dataset_args.noise_std=0.1", "--print_config", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["data"]["dataset_args"]["noise_std"] == 0.1
    assert config["model"]["lr_scheduler"] == "CosineAnnealingLR"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "linaer"), "there is no model/linaer.py; did you mean linear? available: cnn, linear"),
        (("--data", "lines"), "unknown data 'lines': there is no data/lines.py; did you mean line? available: cifar10"),
        (("--model", "linear", "--model.lrr=0.1"), "unrecognized arguments: --model.lrr=0.1"),
        (("--model", "linear", "--data.dataset_args.wieght=0.5"), "unrecognized arguments: --data.dataset_args.wieght"),
        (("--model", "linear", "--data.dataset_args.weight=abc"), 'Parser key "data.dataset_args.weight"'),
        (("--model", "linear", "--model.loss=L2Loss"), "unknown loss 'L2Loss'"),
        (("--model", "linear", "--data.val_fraction=1.5"), "data.val_fraction must be between 0 and 1"),
        (
            ("--model.net=cnn", "--model.loss=CrossEntropyLoss", "--model.net_args.in_channels=1", "--data=synthetic"),
            "error: model 'cnn' cannot take the data's inputs of shape [20]: ",  # a conv net, given flat features
        ),
    ],
)
def test_user_errors_exit_non_zero_with_a_clear_message(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    run = run_main(*args, cwd=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


def test_misspelt_key_in_a_config_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  net: linear\n  lrate: 0.1\n")
    run = run_main("fit", "--config", str(config), cwd=tmp_path)
    assert run.returncode == 2 and "lrate" in run.stderr


def test_adding_a_model_is_adding_one_file(project_copy: Path, tmp_path: Path) -> None:
    (project_copy / "model" / "quadratic.py").write_text(
        '"""y = a x^2 + b x + c."""\n\nimport torch\nfrom torch import nn\n\n\n'
        "class Quadratic(nn.Module):\n"
        "    def __init__(self, init: float = 0.0) -> None:\n"
        '        """Args:\n            init: Starting value of every coefficient."""\n'
        "        super().__init__()\n"
        "        self.coef = nn.Parameter(torch.full((3,), init))\n\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        return self.coef[0] * x**2 + self.coef[1] * x + self.coef[2]\n"
    )
    run = run_main(
        "--model",
        "quadratic",
        "--model.net_args.init=0.5",
        "--model.lr=0.05",
        "--trainer.max_epochs=300",
        cwd=tmp_path,
        root=project_copy,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.run_dir.parent.name == "quadratic"
    assert run.results["test"]["test/loss"] < 0.1
    listing = run_main("--model", "nope", cwd=tmp_path, root=project_copy)
    assert "available: cnn, linear, mlp, quadratic, torchvision_model" in listing.stderr


def test_an_error_inside_a_model_file_surfaces_as_itself(project_copy: Path, tmp_path: Path) -> None:
    (project_copy / "model" / "broken.py").write_text("import torch_does_not_exist\n")
    run = run_main("--model", "broken", cwd=tmp_path, root=project_copy)
    assert run.returncode != 0
    assert "No module named 'torch_does_not_exist'" in run.stderr
    assert "unknown model" not in run.stderr


def test_fast_dev_run_reports_without_writing_a_run(tmp_path: Path) -> None:
    run = run_main("--model", "linear", "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "learned weight:" in run.stdout and "Run written to" not in run.stdout
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("predictions.png"))


def test_a_runs_own_config_re_runs_in_test_validate_and_predict(line_run: Run, tmp_path: Path) -> None:
    config = str(line_run.run_dir / "config.yaml")  # holds test_after_fit, an option of fit
    ckpt = str(line_run.run_dir / "checkpoints/last.ckpt")
    for subcommand in ("validate", "test", "predict"):
        run = run_main(subcommand, "--config", config, "--ckpt_path", ckpt, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_per_subcommand_parser_kwargs_reach_their_parser(
    subcommand: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from command_line import read_command_line
    from main import TemplateCLI

    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("model:\n  lr: 0.123\n")
    command_line = read_command_line([subcommand, "--model.net", "linear", "--print_config"])
    monkeypatch.setattr("sys.argv", ["main.py", *command_line.argv])
    with pytest.raises(SystemExit) as done:
        TemplateCLI(command_line, parser_kwargs={subcommand: {"default_config_files": [str(defaults)]}})
    assert done.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["lr"] == 0.123


def test_help_lists_the_shorthands_models_datasets_and_commands(tmp_path: Path) -> None:
    run = run_main("--help", cwd=tmp_path)
    assert run.returncode == 0
    text = run.stdout
    assert "--model NAME" in text and "--data NAME" in text
    for name in ("cnn", "linear", "mlp", "json_images", "synthetic", "env", "export", "cv, repeat", "aggregate DIR"):
        assert f"\n  {name} " in text, name
    assert "The multilayer perceptron" in text  # each file's first docstring line


def test_a_checkpoint_alone_brings_its_data_and_options_given_still_win(tmp_path: Path) -> None:
    tiny = ("--data.dataset_args.num_samples=200", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false")
    trained = run_main("--model", "mlp", *tiny, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = str(trained.run_dir / "checkpoints/last.ckpt")
    test = run_main("test", "--ckpt_path", ckpt, "--data.batch_size=8", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    config = yaml.safe_load((test.run_dir / "config.yaml").read_text())
    assert config["data"]["dataset"] == "synthetic" and config["data"]["dataset_args"]["num_samples"] == 200
    assert config["data"]["batch_size"] == 8  # given on the command line: it wins over the checkpoint's 64
    assert test.results["checkpoint"] == ckpt and "test/acc" in test.results["test"]


def test_last_and_best_of_a_model_bring_its_data_and_options_given_still_win(tmp_path: Path) -> None:
    # Data unlike configs/mlp.yaml's (200 items of 20 features), which `--model mlp` loads too: the checkpoint's wins.
    data = ("--data.dataset_args.num_samples=120", "--data.dataset_args.num_features=8")
    quiet = ("--trainer.enable_progress_bar=false",)
    trained = run_main("--model", "mlp", *data, "--trainer.max_epochs=2", *quiet, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    best = trained.results["best_checkpoint"]
    last = str(trained.run_dir.relative_to(tmp_path) / "checkpoints" / "last.ckpt")
    own_config = str(trained.run_dir / "config.yaml")
    for args, checkpoint in (
        (("test", "--ckpt_path", "best", "--model", "mlp", "--data.batch_size=8"), best),
        (("validate", "--ckpt_path", "last", "--model", "mlp"), last),
        (("predict", "--ckpt_path", "best", "--model", "mlp"), best),
        (("test", "--config", own_config, "--ckpt_path", "last"), last),
    ):
        run = run_main(*args, *quiet, cwd=tmp_path)
        assert run.returncode == 0, (args, run.stderr[-3000:])
        config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
        assert config["data"]["dataset_args"]["num_features"] == 8, args
        assert config["data"]["dataset_args"]["num_samples"] == 120, args
        assert config["data"]["batch_size"] == (8 if "--data.batch_size=8" in args else 64), args
        assert run.results["checkpoint"] == checkpoint, args
        if args[0] == "predict":
            assert len(list(csv.DictReader((run.run_dir / "predictions.csv").open()))) > 0
        else:
            part, metric = ("validation", "val/acc") if args[0] == "validate" else ("test", "test/acc")
            assert metric in run.results[part], args
    # The evaluations made runs of their own, but no checkpoints: `best` still means the trained run's.
    again = run_main("test", "--ckpt_path", "best", "--model", "mlp", *quiet, cwd=tmp_path)
    assert again.returncode == 0 and again.results["checkpoint"] == best, again.stderr[-3000:]


def test_help_says_each_subcommand_whole_and_puts_the_models_own_options_first(tmp_path: Path) -> None:
    text = run_main("--help", cwd=tmp_path).stdout
    listing = text.split("Available subcommands:")[1].split("\n\n")[0]
    described: dict[str, str] = {}
    for line in listing.splitlines():  # "    fit                 Train the model..." then indented continuations
        if line.startswith("    ") and not line.startswith("     "):
            current, _, sentence = line.strip().partition(" ")
            described[current] = sentence.strip()
        elif described and line.strip():
            described[current] += f" {line.strip()}"
    assert list(described) == ["fit", "validate", "test", "predict", "lr_find", "scale_batch_size"]
    for name, sentence in described.items():
        assert sentence.endswith((".", ".)")), f"{name}'s description is cut: {sentence!r}"
    fit_help = run_main("fit", "--model", "mlp", "--help", cwd=tmp_path).stdout.splitlines()
    first = {line.split()[0]: number for number, line in reversed(list(enumerate(fit_help))) if line.strip()}
    # The network's own options come before the interface's and the trainer's, its docstring line as their title.
    assert first["--model.net_args.hidden_sizes"] < first["--model.lr"] < first["--trainer.max_epochs"]
    assert first["--model.net_args.hidden_sizes"] < 60
    assert "Fully connected network" in fit_help[first["--model.net_args"] - 1]
    assert fit_help[0] == "usage: main.py [options] fit [options]"


def test_mlflow_without_a_tracking_uri_keeps_its_runs_in_the_runs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    run = run_main("--model", "linear", *SHORT, "--trainer.logger", "MLFlowLogger", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "MLflow keeps its runs in sqlite:///runs/mlflow.db" in run.stdout and "Traceback" not in run.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    (found,) = client.search_runs([client.get_experiment_by_name("lightning_logs").experiment_id])
    assert found.data.metrics["hp/test/loss"] == pytest.approx(run.results["test"]["test/loss"])
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["trainer"]["logger"]["init_args"][
        "tracking_uri"
    ] == "sqlite:///runs/mlflow.db"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]  # no mlruns/ beside it
