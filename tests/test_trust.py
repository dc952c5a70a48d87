"""Nothing that a config file, a command-line value or a checkpoint holds runs code (trust.py), at every entry point."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import Run, run_main
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import instantiate_module

from data.data_interface import DInterface
from model.model_interface import MInterface
from trust import MAX_DEPTH, load_checkpoint, load_yaml
from utils import ConfigError

CLASS_PATH_REFUSED = "a class_path ('subprocess.Popen') where a plain value is expected"
REFUSED = re.escape(CLASS_PATH_REFUSED)


def payload(marker: Path) -> dict[str, Any]:
    """A class spec that, if jsonargparse built it, would start a process creating `marker`."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {"class_path": "subprocess.Popen", "init_args": {"args": [sys.executable, "-c", code]}}


def nested(keys: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': value}} for keys 'a.b'."""
    for key in reversed(keys.split(".")):
        value = {key: value}
    return value


def refused(run: Run, key: str, marker: Path) -> None:
    """The run ended in one `error:` line naming `key`, ran nothing, and wrote no run directory."""
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{key}: {CLASS_PATH_REFUSED}" in last, last
    assert not marker.exists()
    assert not (run.cwd / "runs").exists()  # nothing of the payload copied into a config.yaml or checkpoint


# --- jsonargparse's policy, set by importing the interfaces -----------------------------------------------------


class Holder:
    def __init__(self, anything: Any = None, callback: pl.Callback | None = None) -> None:
        self.anything, self.callback = anything, callback


def test_a_class_spec_in_an_untyped_value_is_not_built() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Holder, "holder", fail_untyped=False)
    spec = {"class_path": "torch.nn.ReLU"}  # a trusted import path: only the instantiation policy is tested here
    built = parser.instantiate(parser.parse_object({"holder": {"anything": {"x": [spec]}}})).holder
    assert not isinstance(built.anything["x"][0], torch.nn.Module)
    assert built.anything["x"][0]["class_path"] == "torch.nn.ReLU"


def test_an_import_path_outside_the_trusted_packages_is_not_even_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "stranger.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport lightning.pytorch as pl\nclass Callback(pl.Callback): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Holder, "holder", fail_untyped=False)
    with pytest.raises(Exception, match="Importing 'stranger.Callback' is not allowed"):
        parser.parse_object({"holder": {"callback": {"class_path": "stranger.Callback"}}})
    assert not marker.exists() and "stranger" not in sys.modules
    trusted = parser.parse_object({"holder": {"callback": {"class_path": "callbacks.TrainingSummary"}}})
    assert type(parser.instantiate(trusted).holder.callback).__name__ == "TrainingSummary"


def test_lightnings_own_instantiator_builds_no_class_from_hyperparameters(tmp_path: Path) -> None:
    # The path `load_from_checkpoint` takes for a checkpoint that LightningCLI wrote.
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=rf"model\.loss_args\.x: {REFUSED}"):
        instantiate_module(MInterface, {"loss_args": {"x": payload(marker)}})
    assert not marker.exists()


# --- the interfaces' own check --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        ({"loss_args": {"x": "SPEC"}}, "model.loss_args.x"),
        ({"optimizer_args": {"a": {"b": {"c": "SPEC"}}}}, "model.optimizer_args.a.b.c"),
        ({"lr_scheduler_args": {"milestones": [1, "SPEC"]}}, "model.lr_scheduler_args.milestones[1]"),
        ({"net_args": {"hidden": ["SPEC"]}}, "model.net_args.hidden[0]"),
    ],
)
def test_the_model_refuses_a_class_spec_in_its_arguments(tmp_path: Path, arguments: dict, key: str) -> None:
    marker = tmp_path / "ran"
    spec = yaml.safe_dump(payload(marker), default_flow_style=True).strip()
    filled = yaml.safe_load(yaml.safe_dump(arguments).replace("SPEC", spec))
    with pytest.raises(ConfigError, match=re.escape(key) + f": {REFUSED}"):
        MInterface(**filled)


def test_the_data_module_refuses_a_class_spec_in_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"data\.dataset_args\.weight\.deep: {REFUSED}"):
        DInterface(dataset_args={"weight": {"deep": payload(tmp_path / "ran")}})


# --- YAML: safe, and bounded ----------------------------------------------------------------------------------

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)  # 9 ** 9 = 387 million strings from 400 bytes


def test_a_yaml_alias_bomb_is_refused_at_once_and_ordinary_aliases_still_work() -> None:
    assert len(BILLION_LAUGHS) < 500
    with pytest.raises(ConfigError, match=r"bomb\.yaml: more than 100,000 values .*billion laughs"):
        load_yaml(BILLION_LAUGHS, "bomb.yaml")
    assert load_yaml("lr: &lr 0.1\nwarm: {lr: *lr}\n", "ok.yaml") == {"lr": 0.1, "warm": {"lr": 0.1}}


def test_yaml_nested_beyond_reason_is_refused() -> None:
    for depth in (MAX_DEPTH + 2, 5000):
        with pytest.raises(ConfigError, match=r"deep\.yaml.*(nested more than \d+ levels deep|maximum nesting depth)"):
            load_yaml("[" * depth + "]" * depth, "deep.yaml")


def test_yaml_tags_that_would_build_python_objects_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(f"x: !!python/object/apply:os.system ['touch {marker}']", "tagged.yaml")
    assert not marker.exists()


# --- checkpoints ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of the line model, written by Lightning with the template's hyperparameters."""
    directory = tmp_path_factory.mktemp("plain")
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=directory
    )
    trainer.fit(MInterface(), datamodule=DInterface())
    path = directory / "line.ckpt"
    trainer.save_checkpoint(path)
    return path


def crafted(source: Path, target: Path, change: Any) -> Path:
    """`source` with `change(checkpoint)` applied, saved at `target`; only plain data, so weights-only loads it."""
    checkpoint = torch.load(source, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return target


def test_a_checkpoint_whose_hyperparameters_build_a_class_is_refused_by_every_loader(
    tmp_path: Path, plain_checkpoint: Path
) -> None:
    marker = tmp_path / "ran"

    def change(checkpoint: dict) -> None:
        checkpoint["hyper_parameters"]["lr_scheduler_args"] = {"milestones": [{"deep": payload(marker)}]}
        checkpoint["datamodule_hyper_parameters"]["dataset_args"] = {"x": payload(marker)}

    evil = crafted(plain_checkpoint, tmp_path / "evil.ckpt", change)
    key = rf"hyper_parameters\.lr_scheduler_args\.milestones\[0\]\.deep: {REFUSED}"
    with pytest.raises(ConfigError, match=rf"--ckpt_path {evil}: {key}"):
        load_checkpoint(evil)
    with pytest.raises(ConfigError, match=rf"checkpoint {evil}: {key}"):
        MInterface.load_from_checkpoint(evil)
    with pytest.raises(ConfigError, match="checkpoint .*: hyper_parameters"):
        DInterface.load_from_checkpoint(evil)
    assert not marker.exists()


def test_a_checkpoint_that_names_code_to_run_is_refused(tmp_path: Path, plain_checkpoint: Path) -> None:
    changes = {
        "instantiator": lambda c: c["hyper_parameters"].update(_instantiator="subprocess.Popen"),
        "class_path": lambda c: c["hyper_parameters"].update(_class_path="subprocess.Popen"),
    }
    for name, change in changes.items():
        with pytest.raises(ConfigError, match="name code to run .*'subprocess.Popen'"):
            load_checkpoint(crafted(plain_checkpoint, tmp_path / f"{name}.ckpt", change))


def test_a_checkpoint_bomb_of_shared_references_is_refused_at_once(tmp_path: Path, plain_checkpoint: Path) -> None:
    def change(checkpoint: dict) -> None:
        bomb: list = ["lol"] * 10
        for _ in range(8):
            bomb = [bomb] * 10  # pickled once per level: 10 ** 9 strings once expanded
        checkpoint["hyper_parameters"]["loss_args"] = {"bomb": bomb}

    bomb = crafted(plain_checkpoint, tmp_path / "bomb.ckpt", change)
    assert bomb.stat().st_size < 2 * plain_checkpoint.stat().st_size
    with pytest.raises(ConfigError, match="billion laughs"):
        load_checkpoint(bomb)
    with pytest.raises(ConfigError, match="billion laughs"):
        MInterface.load_from_checkpoint(bomb)


def test_load_from_checkpoint_reads_hparams_file_safely_and_only_weights_only(
    tmp_path: Path, plain_checkpoint: Path
) -> None:
    overrides = tmp_path / "hparams.yaml"
    overrides.write_text("lr: 0.5\n")
    assert MInterface.load_from_checkpoint(plain_checkpoint, hparams_file=overrides).hparams.lr == 0.5
    marker = tmp_path / "ran"
    overrides.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="hparams.yaml is not valid YAML"):
        MInterface.load_from_checkpoint(plain_checkpoint, hparams_file=overrides)
    overrides.write_text(yaml.safe_dump({"loss_args": {"x": payload(marker)}}))
    with pytest.raises(ConfigError, match=rf"hparams\.yaml: loss_args\.x: {REFUSED}"):
        MInterface.load_from_checkpoint(plain_checkpoint, hparams_file=overrides)
    with pytest.raises(ConfigError, match="weights-only unpickling only"):
        MInterface.load_from_checkpoint(plain_checkpoint, weights_only=False)
    assert not marker.exists()


# --- every entry point of main.py, end to end ------------------------------------------------------------------

UNTYPED_NET = """
from torch import nn


class UntypedNet(nn.Module):
    def __init__(self, input_size=1, output_size=1, extra=None):
        super().__init__()
        self.fc = nn.Linear(input_size, output_size)

    def forward(self, x):
        return self.fc(x)
"""
UNTYPED_DATA = """
from data.line import LineDataset


class UntypedLine(LineDataset):
    def __init__(self, train=True, extra=None):
        super().__init__(train=train)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("model.loss_args.x", "model.loss_args.x"),
        ("model.optimizer_args.a.b.c", "model.optimizer_args.a.b.c"),
        ("model.lr_scheduler_args.milestones", "model.lr_scheduler_args.milestones[1]"),
        ("model.net_args.extra", "model.net_args.extra"),
        ("data.dataset_args.extra.deeper", "data.dataset_args.extra.deeper"),
        ("trainer.profiler", "trainer.profiler.dict_kwargs.on_trace_ready"),
    ],
)
def test_a_config_file_that_would_build_a_class_runs_nothing(
    tmp_path: Path, project_copy: Path, where: str, key: str
) -> None:
    (project_copy / "model" / "untyped_net.py").write_text(UNTYPED_NET)
    (project_copy / "data" / "untyped_line.py").write_text(UNTYPED_DATA)
    marker = tmp_path / "ran"
    value: Any = payload(marker)
    if where.endswith("milestones"):
        value = [1, value]
    elif where == "trainer.profiler":
        value = {"class_path": "lightning.pytorch.profilers.PyTorchProfiler", "dict_kwargs": {"on_trace_ready": value}}
    config = tmp_path / "evil.yaml"
    config.write_text(yaml.safe_dump(nested(where, value)))
    args = ("--model", "untyped_net", "--data", "untyped_line", "--config", str(config), "--trainer.max_epochs=1")
    refused(run_main(*args, cwd=tmp_path, root=project_copy), key, marker)


@pytest.mark.slow
def test_a_command_line_value_that_would_build_a_class_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    value = yaml.safe_dump({"x": payload(marker)}, default_flow_style=True).strip()
    refused(run_main("--model", "linear", "--model.loss_args", value, cwd=tmp_path), "model.loss_args.x", marker)


@pytest.mark.slow
def test_a_checkpoint_that_would_build_a_class_runs_nothing_at_any_entry_point(
    tmp_path: Path, plain_checkpoint: Path
) -> None:
    marker = tmp_path / "ran"
    run = tmp_path / "runs" / "linear" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    evil = crafted(
        plain_checkpoint, run / "last.ckpt", lambda c: c["hyper_parameters"].update(loss_args={"x": payload(marker)})
    )
    key = f"hyper_parameters.loss_args.x: {CLASS_PATH_REFUSED}"
    for args in (
        ("test", "--ckpt_path", str(evil)),
        ("validate", "--ckpt_path", str(evil)),
        ("predict", "--ckpt_path", str(evil)),
        ("fit", "--ckpt_path", str(evil)),
        ("--model", "linear", "--ckpt_path", "last"),
        ("test", "--model", "linear", "--ckpt_path", "last"),
        ("export", "--ckpt_path", str(evil), "--out_dir", "exported"),
    ):
        result = run_main(*args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr[-3000:])
        assert result.stderr.strip().splitlines()[-1].startswith("error: --ckpt_path "), (args, result.stderr)
        assert key in result.stderr, (args, result.stderr[-3000:])
    assert not marker.exists()
    assert sorted(p.name for p in (tmp_path / "runs" / "linear").iterdir()) == ["version_0"]
    assert not (tmp_path / "exported").exists()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["file", "command line"])
def test_a_yaml_alias_bomb_fails_fast_with_a_clear_error(tmp_path: Path, source: str) -> None:
    if source == "file":
        config = tmp_path / "bomb.yaml"
        config.write_text("model:\n  net: mlp\n  loss_args:\n" + textwrap.indent(BILLION_LAUGHS, "    "))
        run = run_main("--config", str(config), cwd=tmp_path)
    else:
        flow = "{" + ", ".join(BILLION_LAUGHS.strip().splitlines()) + "}"
        run = run_main("--model", "mlp", "--model.loss_args", flow, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "more than 100,000 values" in run.stderr and "billion laughs" in run.stderr
    assert not (tmp_path / "runs").exists()
