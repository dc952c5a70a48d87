"""The data and model interfaces, the line dataset and the command line's first pass, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, Run

from command_line import read_command_line
from data.data_interface import DInterface
from data.line import LineDataset
from model.linear import LinearRegressionModel
from model.model_interface import MInterface
from utils import ConfigError, available


def test_line_dataset_is_the_straight_line_split_by_position() -> None:
    train, test = LineDataset(train=True), LineDataset(train=False)
    assert (len(train), len(test)) == (40, 10)
    assert train.x.max() < test.x.min()
    torch.testing.assert_close(test.y, 0.7 * test.x + 0.3)
    noisy = LineDataset(noise_std=0.1)
    assert 0.01 < (noisy.y - train.y).abs().mean() < 0.2
    torch.testing.assert_close(LineDataset(noise_std=0.1).y, noisy.y)


def test_line_dataset_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="train_fraction"):
        LineDataset(train_fraction=1.0)
    with pytest.raises(ValueError, match="step > 0"):
        LineDataset(step=0)


def test_splits_are_seeded_and_disjoint() -> None:
    def splits(seed: int) -> list[list[float]]:
        dm = DInterface(dataset="line", split_seed=seed)
        dm.setup("fit")
        return [sorted(float(dm.dataset.x[i]) for i in s.indices) for s in (dm.train_set, dm.val_set)]

    train, val = splits(0)
    assert (len(train), len(val)) == (32, 8) and not set(train) & set(val)
    assert splits(0) == [train, val] and splits(1) != [train, val]


def test_dataset_without_its_own_test_split_is_split_three_ways() -> None:
    dm = DInterface(dataset="line", dataset_args={"train_fraction": 0.5})
    dm.dataset_class = lambda **kwargs: LineDataset(train=True, **kwargs)  # a pool with no `train` switch
    dm.has_test_split = False
    dm.setup("fit")
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [15, 5, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, "val_fraction must be between 0 and 1"),
        ({"test_fraction": 0.1}, "has its own test split"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"persistent_workers": True}, "needs data.num_workers > 0"),
        ({"dataset": "nope"}, "unknown data 'nope'"),
    ],
)
def test_data_interface_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DInterface(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"net": "nope"}, "unknown model 'nope'.*available: cnn, linear, mlp, torchvision_model"),
        ({"loss": "L2Loss"}, "unknown loss 'L2Loss'"),
        ({"optimizer": "Adamm"}, "unknown optimizer 'Adamm'"),
        ({"lr_scheduler": "Cosine"}, "unknown lr_scheduler 'Cosine'"),
        ({"lr": -1.0}, "model.lr must be > 0"),
    ],
)
def test_model_interface_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MInterface(**kwargs)


def test_model_interface_configures_the_named_optimizer_and_scheduler() -> None:
    model = MInterface(optimizer="Adam", lr=0.2, lr_scheduler="StepLR", lr_scheduler_args={"step_size": 3})
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam) and config["optimizer"].defaults["lr"] == 0.2
    assert config["lr_scheduler"]["scheduler"].step_size == 3
    assert isinstance(MInterface().configure_optimizers()["optimizer"], torch.optim.SGD)
    sgd = MInterface(optimizer_args={"momentum": 0.9, "nesterov": True}).configure_optimizers()["optimizer"]
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]


def test_available_lists_files_not_interfaces_or_helpers() -> None:
    assert available("model") == ["cnn", "linear", "mlp", "torchvision_model"]
    data = ["cifar10", "fashion_mnist", "image_folder", "json_images", "line", "mnist", "synthetic"]
    assert available("data") == data


def argv_of(argv: list[str]) -> list[str]:
    return read_command_line(argv).argv


def names_of(argv: list[str]) -> tuple[str, str]:
    command_line = read_command_line(argv)
    return command_line.model, command_line.data


def test_argv_gets_fit_and_expands_shorthands_idempotently() -> None:
    config = str(ROOT / "configs" / "linear.yaml")
    once = argv_of(["--trainer.max_epochs=5", "--model", "linear", "--data=line"])
    assert once == [
        "fit",
        "--config",
        config,
        "--trainer.max_epochs=5",
        "--model.net",
        "linear",
        "--data.dataset",
        "line",
    ]
    assert argv_of(once) == once
    assert argv_of(["test", "--model", "cfg.yaml"]) == ["test", "--model", "cfg.yaml"]
    assert argv_of(["--help"]) == ["--help"]
    with pytest.raises(ConfigError, match="unknown subcommand 'fitt': did you mean fit"):
        argv_of(["fitt", "--model", "linear"])


def test_argv_selects_an_experiment_config_by_name_and_expands_aliases() -> None:
    resnet = str(ROOT / "configs" / "resnet.yaml")
    # configs/resnet.yaml names its model (torchvision_model); there is no model/resnet.py to select.
    assert argv_of(["--model", "resnet", "--data.root", "d"]) == [
        "fit", "--config", resnet, "--data.dataset_args.root", "d"
    ]  # fmt: skip
    assert names_of(["--model", "resnet"])[0] == "torchvision_model"
    expanded = ["fit", "--data.dataset", "mnist", "--data.dataset_args.root=d"]
    assert argv_of(["--data", "mnist", "--data.root=d"]) == expanded
    # configs/json_images.yaml sets the model, the optimizer and the trainer too: `--data` never reads such a config.
    assert argv_of(["--data", "json_images"]) == ["fit", "--data.dataset", "json_images"]
    assert read_command_line(["--model", "json_images"]).configs == [str(ROOT / "configs" / "json_images.yaml")]


def test_selected_names_follow_configs_then_later_arguments(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  net: from_config\ndata:\n  dataset: data_from_config\n")
    assert names_of(["fit"]) == ("linear", "line")
    assert names_of(["fit", "--config", str(config)]) == ("from_config", "data_from_config")
    assert names_of(["fit", "--config", str(config), "--model.net=later"]) == ("later", "data_from_config")
    # A shorthand's config is read before every other option, wherever it stands.
    assert names_of(["fit", "--model.net=later", "--model", "mlp"]) == ("mlp", "synthetic")
    assert names_of(["fit", "--model.net=cnn", "--model", "resnet"]) == ("cnn", "cifar10")
    model_config = tmp_path / "m.yaml"
    model_config.write_text("net: from_model_config\n")
    assert names_of(["fit", "--model", str(model_config)]) == ("from_model_config", "line")


def test_the_first_pass_reads_each_config_file_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import command_line

    read: list[str] = []
    load = command_line.load_yaml_file
    monkeypatch.setattr(command_line, "load_yaml_file", lambda path: read.append(str(path)) or load(path))
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  net: mlp\n")
    read_command_line(["--model", "mlp", "--config", str(config), "--trainer.max_epochs", "3"])
    assert read == [str(ROOT / "configs" / "mlp.yaml"), str(config)]


@pytest.mark.slow
def test_state_dict_round_trip_in_plain_pytorch(line_run: Run) -> None:
    trained = MInterface.load_from_checkpoint(line_run.cwd / line_run.results["best_checkpoint"])
    fresh = LinearRegressionModel()
    fresh.load_state_dict(torch.load(line_run.run_dir / "model.pth", weights_only=True))
    fresh.eval()
    x = torch.arange(0.8, 1.0, 0.02).unsqueeze(1)
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), trained.net(x), rtol=0, atol=0)
    assert abs(fresh.weight.item() - 0.7) < 0.01 and abs(fresh.bias.item() - 0.3) < 0.01


@pytest.mark.slow
def test_load_from_checkpoint_needs_no_arguments(line_run: Run) -> None:
    model = MInterface.load_from_checkpoint(line_run.run_dir / "checkpoints" / "last.ckpt")
    assert model.hparams.net == "linear" and model.hparams.lr_scheduler == "CosineAnnealingLR"
    with torch.inference_mode():
        prediction = model(torch.tensor([[2.0]])).item()
    assert abs(prediction - (0.7 * 2.0 + 0.3)) < 0.03


def test_the_finders_take_the_tuners_defaults() -> None:
    import inspect

    from lightning.pytorch.tuner import Tuner

    from finders import TemplateTrainer

    for name in ("lr_find", "scale_batch_size"):
        ours = inspect.signature(getattr(TemplateTrainer, name)).parameters
        tuners = inspect.signature(getattr(Tuner, name)).parameters
        for option in set(ours) - {"self", "model", "datamodule", "train"}:
            assert ours[option].default == tuners[option].default, f"{name} --{option}"


def test_last_of_a_model_brings_its_data_between_the_models_config_and_the_options_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "runs" / "mlp" / "version_3" / "checkpoints"
    checkpoints.mkdir(parents=True)
    held = {"dataset": "json_images", "batch_size": 7}
    torch.save(
        {"hyper_parameters": {"net": "mlp"}, "datamodule_hyper_parameters": held, "state_dict": {}},
        checkpoints / "last.ckpt",
    )
    command_line = read_command_line(["test", "--model", "mlp", "--ckpt_path", "last", "--data.batch_size=8"])
    config = str(ROOT / "configs" / "mlp.yaml")  # names the synthetic data, which the checkpoint's replaces
    assert command_line.argv == [
        "test", "--config", config, "--data", json.dumps(held, sort_keys=True), "--model.net", "mlp",
        "--ckpt_path", "last", "--data.batch_size=8",
    ]  # fmt: skip
    assert (command_line.model, command_line.data) == ("mlp", "json_images")
    assert command_line.checkpoint == str(Path("runs/mlp/version_3/checkpoints/last.ckpt"))
    again = read_command_line(command_line.argv)  # DDP's re-launch with the rewritten command line
    assert (again.argv, again.data) == (command_line.argv, "json_images")
    # `fit --ckpt_path last` resumes the run, data and all, through LightningCLI: nothing inserted here.
    assert "--data" not in read_command_line(["fit", "--model", "mlp", "--ckpt_path", "last"]).argv
