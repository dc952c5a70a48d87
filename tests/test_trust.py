"""Nothing that a config file, a command-line value or a checkpoint holds runs code (trust.py), at every entry point."""

from __future__ import annotations

import pickle
import re
import sys
import textwrap
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import Run, run_main
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import instantiate_module
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import SingleDeviceStrategy

from callbacks.checkpointing import AtomicCheckpointIO, check_checkpoint_reading, with_checked_loading
from data.data_interface import DInterface
from export import example_input
from model.model_interface import MInterface
from trust import MAX_DEPTH, check_checkpoint_file, load_checkpoint, load_yaml, pickle_calls, shown
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


def test_yaml_numbers_and_sizes_beyond_any_setting_are_refused() -> None:
    with pytest.raises(ConfigError, match="huge.yaml is not valid YAML: Exceeds the limit"):
        load_yaml("seed: " + "9" * 5000, "huge.yaml")
    with pytest.raises(ConfigError, match=r"sexagesimal\.yaml: seed: a number of \d+ bits, more than any setting"):
        load_yaml("seed: " + ":".join(["1"] * 40), "sexagesimal.yaml")  # YAML 1.1 reads base 60
    with pytest.raises(ConfigError, match="more than 131,072 characters of YAML"):
        load_yaml("a: 1\n" * 30_000, "long.yaml")


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


def test_a_checkpoint_accepted_once_is_checked_again_when_it_changes(tmp_path: Path, plain_checkpoint: Path) -> None:
    path = tmp_path / "last.ckpt"
    path.write_bytes(plain_checkpoint.read_bytes())
    check_checkpoint_file(path)
    crafted(plain_checkpoint, path, lambda c: c["hyper_parameters"].update(loss_args={"x": payload(tmp_path / "x")}))
    with pytest.raises(ConfigError, match=f"hyper_parameters.loss_args.x: {REFUSED}"):
        check_checkpoint_file(path)
    with pytest.raises(ConfigError, match=f"hyper_parameters.loss_args.x: {REFUSED}"):
        load_checkpoint(path)


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


class Calls:
    """Pickles as a call of `function(*args)`, as a crafted checkpoint would hold it."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("bytearray", Calls(bytearray, 2**40)),
        ("FloatTensor", Calls(torch.FloatTensor, 2**38)),
        ("UntypedStorage", Calls(torch.UntypedStorage, 2**40)),
        ("Counter", Calls(Counter, "abc")),
    ],
)
def test_a_checkpoint_that_calls_more_than_tensors_and_dicts_is_refused_before_unpickling(
    tmp_path: Path, plain_checkpoint: Path, name: str, call: Calls
) -> None:
    # Weights-only unpickling allows them all; the first three take a terabyte, from a file of a few kilobytes.
    bomb = crafted(plain_checkpoint, tmp_path / f"{name}.ckpt", lambda c: c.update(bomb=call))
    with pytest.raises(
        ConfigError, match=rf"refused, it does not load with weights-only unpickling: it calls \S*{name},"
    ):
        load_checkpoint(bomb)


def test_what_a_pickle_calls_is_read_off_its_opcodes() -> None:
    state = {"nested": [OrderedDict(a=1), {2, 3}], "memory": Calls(bytearray, 10), "again": Calls(bytearray, 20)}
    assert pickle_calls(pickle.dumps(state, protocol=2)) == {
        "collections.OrderedDict",
        "builtins.set",
        "builtins.bytearray",
    }
    assert pickle_calls(pickle.dumps(state, protocol=5)) == {"?"}  # names pushed as strings: not what torch.save writes
    with pytest.raises(ValueError, match="REDUCE finds too few values"):
        pickle_calls(b"\x80\x02R.")


def test_a_checkpoint_in_another_format_than_torch_saves_is_refused_or_unreadable(
    tmp_path: Path, plain_checkpoint: Path
) -> None:
    bare = tmp_path / "bare.ckpt"
    bare.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(ConfigError, match="refused, it is not the zip archive that torch.save writes but a bare"):
        load_checkpoint(bare)
    squeezed = tmp_path / "squeezed.ckpt"
    with zipfile.ZipFile(plain_checkpoint) as source, zipfile.ZipFile(squeezed, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, source.read(member))
    with pytest.raises(ConfigError, match="refused, torch.save never compresses"):
        load_checkpoint(squeezed)
    for name, data in {"empty": b"", "truncated": plain_checkpoint.read_bytes()[:1000]}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match="not a readable checkpoint"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(ConfigError, match="read from local files only"):
        load_checkpoint("https://example.com/model.ckpt")


def test_bare_weights_load_only_where_lightning_hands_them_back(tmp_path: Path) -> None:
    weights = tmp_path / "weights.ckpt"
    torch.save(MInterface(net="linear").state_dict(), weights)  # what ddp_spawn's processes hand back
    assert set(AtomicCheckpointIO().load_checkpoint(weights)) == {"net.weight", "net.bias"}
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        load_checkpoint(weights)


def test_a_strategy_that_reads_checkpoints_its_own_way_is_refused() -> None:
    class OwnReading(SingleDeviceStrategy):
        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict:
            return torch.load(checkpoint_path, weights_only=False)

    check_checkpoint_reading(SingleDeviceStrategy("cpu", checkpoint_io=AtomicCheckpointIO()))
    for strategy in (SingleDeviceStrategy("cpu"), OwnReading("cpu", checkpoint_io=AtomicCheckpointIO())):
        with pytest.raises(ConfigError, match="reads checkpoints its own way"):
            check_checkpoint_reading(strategy)


def test_a_hostile_value_is_shown_cut_short_in_the_error(tmp_path: Path, plain_checkpoint: Path) -> None:
    huge = "subprocess.Popen" + "x" * 10**6
    evil = crafted(plain_checkpoint, tmp_path / "evil.ckpt", lambda c: c["hyper_parameters"].update(_class_path=huge))
    with pytest.raises(ConfigError, match="name code to run") as refused:
        load_checkpoint(evil)
    assert len(str(refused.value)) < 500
    assert shown(2**100) == "a number of 101 bits" and shown(torch.zeros(10**6)) == "a Tensor"


def _checkpoint_state(checkpoint: dict) -> dict:
    return next(state for key, state in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint"))


@pytest.mark.parametrize(
    ("key", "value", "refusal"),
    [
        ("best_model_path", "http://example.com/evil.ckpt", "not a local file name"),
        ("last_model_path", "runs/x/checkpoints/../../../../home/user/thesis.tex", "climbs out of its folder"),
        ("best_k_models", {"ckpts/../../../etc/important": 0.1}, "climbs out of its folder"),
        ("kth_best_model_path", 3, "not a local file name"),
    ],
)
def test_a_checkpoint_whose_callback_state_names_files_to_fetch_or_delete_elsewhere_is_refused(
    tmp_path: Path, plain_checkpoint: Path, key: str, value: Any, refusal: str
) -> None:
    # Lightning reads the best checkpoint after fit, and deletes an old last or top-k one when it saves a new one.
    evil = crafted(plain_checkpoint, tmp_path / "evil.ckpt", lambda c: _checkpoint_state(c).update({key: value}))
    with pytest.raises(ConfigError, match=f"the state of callback ModelCheckpoint.* names .*{refusal}: refused"):
        load_checkpoint(evil)


def test_a_checkpoint_of_a_run_under_a_parent_folder_still_loads(tmp_path: Path, plain_checkpoint: Path) -> None:
    def elsewhere(checkpoint: dict) -> None:
        _checkpoint_state(checkpoint).update(
            dirpath="../experiments/line/checkpoints", best_model_path="../experiments/line/checkpoints/best.ckpt"
        )

    assert load_checkpoint(crafted(plain_checkpoint, tmp_path / "moved.ckpt", elsewhere))["state_dict"]


def test_the_trainer_reads_every_checkpoint_through_the_checks_whatever_weights_only_it_is_given(
    tmp_path: Path, plain_checkpoint: Path
) -> None:
    marker = tmp_path / "ran"
    evil = crafted(plain_checkpoint, tmp_path / "evil.ckpt", lambda c: c.update(x=Calls(Path.touch, marker)))
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, plugins=[AtomicCheckpointIO()])
    with pytest.raises(ConfigError, match="refused, it does not load with weights-only unpickling"):
        trainer.validate(MInterface(), datamodule=DInterface(), ckpt_path=evil, weights_only=False)
    assert not marker.exists()


def test_the_trainer_always_gets_the_checking_checkpoint_io() -> None:
    environment = LightningEnvironment()
    assert [type(p) for p in with_checked_loading(None)] == [AtomicCheckpointIO]
    assert [type(p) for p in with_checked_loading(environment)] == [LightningEnvironment, AtomicCheckpointIO]
    ours = AtomicCheckpointIO()
    assert with_checked_loading([ours, "bf16-mixed"]) == [ours, "bf16-mixed"]
    with pytest.raises(ConfigError, match="trainer.plugins: TorchCheckpointIO would read checkpoints without"):
        with_checked_loading([environment, TorchCheckpointIO()])


def test_a_hostile_example_input_shape_is_refused_before_it_allocates() -> None:
    for shape in ([2**20, 2**20], [3, "28"], [1.5]):
        with pytest.raises(ConfigError, match="input_shape"):
            example_input({"net": "cnn", "net_args": {}}, shape)


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


@pytest.mark.slow
def test_the_command_line_cannot_turn_weights_only_loading_off_or_drop_the_checking_checkpoint_io(
    tmp_path: Path,
) -> None:
    (tmp_path / "unsafe.yaml").write_text("weights_only: false\n")
    for unsafe in (("--weights_only", "false"), ("--config", "unsafe.yaml")):
        run = run_main("fit", "--model", "linear", *unsafe, cwd=tmp_path)
        error = [line for line in run.stderr.splitlines() if line.startswith("error:")][-1]
        assert run.returncode == 2 and "weights_only" in error, run.stderr[-2000:]
    io = "lightning.pytorch.plugins.io.TorchCheckpointIO"
    run = run_main("--model", "linear", "--trainer.plugins", io, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "error: trainer.plugins: TorchCheckpointIO would read checkpoints without" in run.stderr
    assert not (tmp_path / "runs").exists()
    # Plugins of other kinds, and checkpoint callbacks of the user's own, keep the checking CheckpointIO (main.py
    # refuses to train without it).
    run = run_main(
        "--model", "linear", "--trainer.max_epochs=3", "--trainer.plugins",
        "lightning.pytorch.plugins.environments.LightningEnvironment",
        "--trainer.callbacks+=OnExceptionCheckpoint", "--trainer.callbacks.dirpath", "on_exception", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        "class_path: lightning.pytorch.plugins.environments.LightningEnvironment"
        in (run.run_dir / "config.yaml").read_text()
    )
