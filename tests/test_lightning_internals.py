"""The private Lightning and jsonargparse names the template uses: all in lightning_internals.py, and all still
there."""

from __future__ import annotations

import re
from typing import NoReturn

import lightning
import lightning.pytorch as pl
import pytest
from conftest import ROOT
from lightning.pytorch.callbacks import ModelCheckpoint

# Attribute access or imports of names that Lightning or jsonargparse keep private.
PRIVATE = re.compile(
    r"\b(?:trainer|strategy|fit_loop|epoch_loop|loop|parser|cli|launcher)\._[a-z]\w*"
    r"|\bsuper\(\)\._[a-z]\w*"
    r"|from (?:lightning|jsonargparse)[\w.]* import [^\n]*\b_\w+"
)


def test_private_lightning_names_are_used_in_one_place_only() -> None:
    files = [
        path
        for path in ROOT.rglob("*.py")
        if not {".venv", "tests", "bench"} & set(path.relative_to(ROOT).parts) and path.name != "lightning_internals.py"
    ]
    found = [f"{path.relative_to(ROOT)}: {match}" for path in files for match in PRIVATE.findall(path.read_text())]
    assert not found, f"private Lightning names outside lightning_internals.py: {found}"


def test_the_private_names_it_uses_are_still_there() -> None:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    where = f"lightning {lightning.__version__} has no %s: update lightning_internals.py"
    assert hasattr(trainer, "_logger_connector"), where % "Trainer._logger_connector"
    assert hasattr(type(trainer._logger_connector), "should_update_logs"), where % "_LoggerConnector.should_update_logs"
    assert callable(getattr(trainer.fit_loop, "_should_accumulate", None)), where % "_FitLoop._should_accumulate"
    checkpoint = ModelCheckpoint()
    for name in ("_last_checkpoint_saved", "_last_global_step_saved"):
        assert hasattr(checkpoint, name), where % f"ModelCheckpoint.{name}"
    from datetime import timedelta

    from lightning_internals import saves_during_epochs

    assert saves_during_epochs(checkpoint) == (0, None)
    assert saves_during_epochs(ModelCheckpoint(every_n_train_steps=7)) == (7, None)
    every = ModelCheckpoint(train_time_interval=timedelta(minutes=5))
    assert saves_during_epochs(every) == (0, timedelta(minutes=5)), where % "ModelCheckpoint._train_time_interval"


def test_jsonargparse_still_names_the_subcommand_that_failed() -> None:
    from jsonargparse import ArgumentParser

    from lightning_internals import parser_that_failed

    errors: list[Exception | None] = []

    class Recording(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            errors.append(ex)
            raise SystemExit(2)

    parser, fit = Recording(), ArgumentParser()
    fit.add_argument("--epochs", type=int)
    parser.add_subcommands().add_subcommand("fit", fit)
    with pytest.raises(SystemExit):
        parser.parse_object({"subcommand": "fit", "fit": {"nope": 1}})  # what a config for another subcommand does
    assert parser_that_failed(errors[0], parser) is fit, "jsonargparse no longer attaches subcommand_parser"
