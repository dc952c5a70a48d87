"""Entry point: a LightningCLI over `MInterface` and `DInterface`.

    python main.py --model linear                      # fit with configs/linear.yaml
    python main.py fit --config configs/linear.yaml --trainer.max_epochs=50 --model.lr=0.1
    python main.py test --config configs/linear.yaml --ckpt_path runs/linear/version_0/checkpoints/last.ckpt
    python main.py lr_find --model mlp --train true     # Lightning's LR finder, then train at its suggestion
    python main.py env                                  # versions, devices and GPU memory

With no subcommand, `fit` is meant. `--model NAME` selects `model/NAME.py` and starts from
`configs/NAME.yaml` when it exists; `--data NAME` does the same for `data/NAME.py`. The chosen model's and
dataset's constructor arguments become `--model.net_args.*` and `--data.dataset_args.*`, typed and checked.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.utils.data import Dataset

from callbacks import (
    ClassificationFigures,
    FiniteLossGuard,
    GPUMemoryFraction,
    ProgressBar,
    ResumableCheckpoint,
    TrainingSummary,
)
from callbacks.checkpointing import check_checkpoint_reading, with_checked_loading
from callbacks.run_directory import RunDirectory, requeued, run_of_job, slurm_job
from data.data_interface import DInterface, item_ids
from files import run_dir, write_atomically, write_error
from model.model_interface import DATA_DIMS, MInterface
from trust import check_checkpoint_file, check_config, load_checkpoint, load_yaml_file, shown
from utils import ROOT, ConfigError, available, did_you_mean, find_class

# Lightning's learning-rate and batch-size finders, as subcommands that take the same options as `fit`.
FINDERS = {
    "lr_find": {"method", "update_attr", "attr_name"},
    "scale_batch_size": {"method", "batch_arg_name"},
}
SUBCOMMANDS = ("fit", "validate", "test", "predict", *FINDERS)
# `--model NAME` / `--data NAME` set these keys.
SHORTHANDS = {"--model": "--model.net", "--data": "--data.dataset"}
NAME_KEYS = {"model": "net", "data": "dataset"}
# Short forms of common options. The optimizer and scheduler are the model's (LightningCLI's own `--optimizer`
# group would build the optimizer before the network exists, and bypass warm-up).
ALIASES = {
    "--data.root": "--data.dataset_args.root",
    "--optimizer": "--model.optimizer",
    "--lr_scheduler": "--model.lr_scheduler",
}
RUNS_DIR = "runs"
# The checkpoint plugin, as config.yaml can write it (an instance would be a warning on every run).
ATOMIC_CHECKPOINTS = {"class_path": "callbacks.AtomicCheckpointIO"}
# Models with at most this many parameter values get them printed and written to results.json.
SMALL_MODEL = 16
# The exit status of a run stopped by SIGTERM, as a shell reports a process that SIGTERM killed.
SIGTERM_STATUS = 128 + signal.SIGTERM


def _is_config_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml", ".json")) or Path(value).is_file()


def normalize_argv(argv: list[str]) -> list[str]:
    """Insert the default `fit` subcommand and expand the `--model NAME` / `--data NAME` shorthands and aliases.

    `--model NAME` means `configs/NAME.yaml` when that exists, plus `model/NAME.py` when that exists (so an
    experiment config like `configs/resnet.yaml` is selected by its name). Idempotent, because DDP re-launches
    this script with the rewritten `sys.argv`.
    """
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        commands = [*SUBCOMMANDS, "env", "export"]
        raise ConfigError(
            f"unknown subcommand {argv[0]!r}: {did_you_mean(argv[0], commands)}use one of {', '.join(commands)} "
            "(or none, for fit)"
        )
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["fit", *argv]
    head, rest, configs = argv[:1], [], []
    tokens = iter(argv[1:])
    for token in tokens:
        key, eq, value = token.partition("=")
        if key in SHORTHANDS:
            value = value if eq else next(tokens, "")
            if not value or _is_config_file(value):
                rest += [key, value] if value else [key]
                continue
            config = ROOT / "configs" / f"{value}.yaml"
            if config.is_file():
                configs += ["--config", str(config)]
            if not config.is_file() or value in available(key[2:]):
                rest += [SHORTHANDS[key], value]
        else:
            rest.append(ALIASES.get(key, key) + eq + value)
    return head + configs + rest


def _name(section: Any, group: str) -> str | None:
    """The model or dataset name set in one config section (`group` is model or data), if any."""
    return section.get(NAME_KEYS[group]) if isinstance(section, dict) else None


def selected_names(argv: list[str]) -> tuple[str, str]:
    """The model and dataset names that this command line selects, before the full parse.

    The full parser needs them to add the chosen classes' arguments. Later settings win, as in the
    parser itself. A checkpoint given with `--ckpt_path` names the model (LightningCLI applies its
    hyperparameters last); a different model chosen on the command line is an error.
    """
    names = {
        "model": inspect.signature(MInterface).parameters["net"].default,
        "data": inspect.signature(DInterface).parameters["dataset"].default,
    }
    chosen, held = None, None  # the model named by the arguments, and the one in the checkpoint
    tokens = iter(argv)
    for token in tokens:
        key, eq, value = token.partition("=")
        if key not in ("-c", "--config", "--ckpt_path", *SHORTHANDS, *SHORTHANDS.values()):
            continue
        value = value if eq else next(tokens, "")
        found: dict[str, str | None] = {}
        if key in SHORTHANDS.values():
            found = {key[2:].split(".")[0]: value}
        elif key == "--ckpt_path" and Path(value).is_file():
            held = _name(load_checkpoint(value).get("hyper_parameters"), "model")
            continue
        elif key in ("-c", "--config") and Path(value).is_file():
            config = load_yaml_file(value)
            found = {group: _name(config.get(group), group) for group in names} if isinstance(config, dict) else {}
        elif key in SHORTHANDS and Path(value).is_file():
            found = {key[2:]: _name(load_yaml_file(value), key[2:])}
        names.update({group: name for group, name in found.items() if name})
        chosen = found.get("model") or chosen
    if held and chosen and held != chosen:
        raise ConfigError(
            f"--ckpt_path holds a checkpoint of model {held!r}, not {chosen!r}: give a checkpoint of "
            f"{chosen!r}, or leave the model out to use {held!r}"
        )
    return held or names["model"], names["data"]


def _user_error_in(error: BaseException | None) -> ConfigError | None:
    """The ConfigError that `error` was raised from, if any."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    return error


def latest_checkpoint(runs: Path, kind: str, *, set_aside: bool = False) -> Path | None:
    """The `last` or `best` checkpoint of the latest run under `runs` (runs/<model>/version_N) that saved any; None
    if none did. `last` is the newest checkpoint of that run that loads (`newest_loadable`, `set_aside` as there),
    `best` the best one that it records. Folders not named version_N, such as a copy `version_2_backup`, are no
    runs."""
    saved = [
        folder
        for folder in runs.glob("version_*")
        if folder.name.removeprefix("version_").isdecimal() and _checkpoints(folder / "checkpoints")
    ]
    if not saved:
        return None
    run = max(saved, key=lambda folder: int(folder.name.removeprefix("version_")))
    found = newest_loadable(run / "checkpoints", set_aside=set_aside)
    if found is None:
        raise ConfigError(
            f"--ckpt_path {kind}: no checkpoint of the latest run, {run}, loads (each is skipped above with the "
            "reason); give one with --ckpt_path PATH, or leave --ckpt_path out to start a new run"
        )
    if kind == "last":
        return found
    states = load_checkpoint(found).get("callbacks", {})
    best = next((s.get("best_model_path") for k, s in states.items() if "Checkpoint{" in k), None)
    if not best or not Path(best).is_file():
        raise ConfigError(f"--ckpt_path best: the run in {run} recorded no best checkpoint; use last")
    return Path(best)


def newest_loadable(folder: Path, *, set_aside: bool = False) -> Path | None:
    """The newest checkpoint in `folder` that `check_checkpoint_file` accepts: last.ckpt, or a SLURM pre-emption's
    hpc_ckpt_N.ckpt when nothing was written after it. A crash can leave last.ckpt damaged, or someone may have put a
    hostile file there: each one refused is skipped with a line on stderr that says why. With `set_aside` (training
    resumes into `folder`), each is also renamed to `<name>.refused` once one loads, so that the run writes its
    last.ckpt again, not a last-v1.ckpt. A file that cannot be read at all (no permission, an I/O error, too
    little memory) is no damage to skip: that is an error."""
    candidates = _checkpoints(folder)
    candidates.sort(key=lambda path: (-path.lstat().st_mtime_ns, path.name != "last.ckpt"))
    found, skipped = None, {}
    for candidate in candidates:
        try:
            check_checkpoint_file(candidate)
        except ConfigError as error:
            if isinstance(error.__cause__, (OSError, MemoryError)):
                raise
            skipped[candidate] = str(error).removeprefix(f"--ckpt_path {candidate}: ")
            continue
        found = candidate
        break
    for path, reason in skipped.items():
        if set_aside and found:
            reason += f"; renamed to {_set_aside(path).name}"
        print(f"Skipped {path}: {reason}", file=sys.stderr)
    return found


def _checkpoints(folder: Path) -> list[Path]:
    """The checkpoints in `folder`, less hidden ones (a tuner's temporary checkpoints)."""
    return [path for path in folder.glob("*.ckpt") if not path.name.startswith(".")]


def _set_aside(path: Path) -> Path:
    """Rename `path` to `<name>.refused` (or `.refused-N`, never replacing a file) and return the new path."""
    target = path.with_name(f"{path.name}.refused")
    number = 0
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.refused-{number}")
    return path.rename(target)


class TemplateParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one `error:` line and a pointer to `--help`, not the usage first."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parse inside a parse, whose failure jsonargparse handles
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        sys.stderr.write(f"error: {' '.join(message.split())}\n(python {prog} --help lists the options)\n")
        self.exit(2)


class TemplateCLI(LightningCLI):
    """LightningCLI with the chosen model's and dataset's arguments, our callbacks, and a report after each run."""

    current: TemplateCLI | None = None  # the CLI of this process, for main()'s messages

    def __init__(self, model_name: str, data_name: str, **kwargs: Any) -> None:
        self.net_class = find_class("model", model_name, nn.Module)
        self.dataset_class = find_class("data", data_name, Dataset)
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": RUNS_DIR, "name": model_name, "default_hp_metric": False},
        }
        self.results: dict[str, Any] = {}  # what results.json holds
        self.phase = "setup"  # what the run is doing, for the message of a SIGTERM (see `stopped`)
        TemplateCLI.current = self
        super().__init__(
            MInterface,
            DInterface,
            trainer_defaults={"logger": logger, "default_root_dir": RUNS_DIR, "plugins": [ATOMIC_CHECKPOINTS]},
            seed_everything_default=42,
            auto_configure_optimizers=False,
            parser_class=TemplateParser,
            save_config_callback=RunDirectory,
            **kwargs,
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # As LightningCLI's own, except that `model.net_args`/`data.dataset_args` take the chosen classes' arguments.
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items()})
        for key, interface, cls in (("model", MInterface, self.net_class), ("data", DInterface, self.dataset_class)):
            args = f"{NAME_KEYS[key]}_args"
            parser.add_class_arguments(interface, key, skip={args}, fail_untyped=False, sub_configs=True)
            parser.add_class_arguments(
                cls, f"{key}.{args}", skip={"train"}, instantiate=False, fail_untyped=False, sub_configs=True
            )
        # Unset, a network's size parameters are filled in from the data (see MInterface).
        net_parameters = inspect.signature(self.net_class).parameters
        parser.set_defaults({f"model.net_args.{name}": None for name in DATA_DIMS if name in net_parameters})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.filename": "best-{epoch}",
                "checkpoint.save_last": True,
            }
        )
        optional = {
            "early_stopping": (EarlyStopping, {"monitor": "val/loss", "patience": 10}),
            "lr_monitor": (LearningRateMonitor, {"logging_interval": "step"}),
            "training_summary": (TrainingSummary, {}),
            "finite_loss": (FiniteLossGuard, {}),
            "classification_figures": (ClassificationFigures, {}),
            "progress_bar": (ProgressBar, {}),
        }
        for key, (cls, defaults) in optional.items():
            parser.add_lightning_class_args(cls, key, subclass_mode=True, required=False)
            parser.set_defaults({key: {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": defaults}})
        parser.add_argument(
            "--gpu_memory_fraction",
            type=float | None,
            default=None,
            help="Share of each GPU's memory this run may allocate, in (0, 1]; null for no limit.",
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # No `--weights_only`: every checkpoint is read weights-only (AtomicCheckpointIO), whatever a config says.
        base = {name: skip | {"weights_only"} for name, skip in LightningCLI.subcommands().items()}
        return {**base, **{name: base["fit"] | {"dataloaders"} | skip for name, skip in FINDERS.items()}}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # As LightningCLI's own, except that the finders' arguments come from `Tuner` rather than `Trainer`.
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        for subcommand in self.subcommands():
            klass = Tuner if subcommand in FINDERS else self.trainer_class
            description = inspect.getdoc(getattr(klass, subcommand)).splitlines()[0]
            subparser = self._prepare_subcommand_parser(klass, subcommand, description=description)
            self._subcommand_parsers[subcommand] = subparser
            subcommands.add_subcommand(subcommand, subparser, help=description)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # The one place LightningCLI builds a parser per subcommand: `fit` and the finders get their own options here.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in FINDERS:
            parser.add_argument(
                "--train", type=bool, default=False, help="Apply the suggestion and train with it, as `fit` does."
            )
        if subcommand == "fit" or subcommand in FINDERS:
            parser.add_argument(
                "--test_after_fit", type=bool, default=True, help="Test the best checkpoint once fitting ends."
            )
        return parser

    def _parse_ckpt_path(self) -> None:
        # `--ckpt_path last|best` means the latest run of this model; `fit` from a checkpoint of a run goes on
        # in that run's directory. LightningCLI then applies the checkpoint's hyperparameters.
        section = self.config.get(str(self.config.get("subcommand")))
        logger = section.trainer.get("logger") if section else None
        runs = Path(logger.init_args.save_dir) / logger.init_args.name if hasattr(logger, "init_args") else None
        if self.config.subcommand == "fit" and not section.get("ckpt_path") and runs is not None and requeued():
            self._resume_requeued_job(section, runs)
        ckpt_path = section.get("ckpt_path") if section else None
        if ckpt_path in ("last", "best") and runs is not None:
            resuming = self.config.subcommand == "fit" and rank_zero_only.rank == 0  # one process renames
            found = latest_checkpoint(runs, ckpt_path, set_aside=resuming)
            if found is None and (self.config.subcommand, ckpt_path) == ("fit", "last"):
                print(f"No run under {runs} to resume: starting a new one")  # so a re-queued job can always resume
            elif found is None:
                raise ConfigError(f"--ckpt_path {ckpt_path}: no run under {runs} has a checkpoint yet; train first")
            section.ckpt_path = ckpt_path = str(found) if found else None
        elif ckpt_path and not Path(ckpt_path).is_file():
            raise ConfigError(f"--ckpt_path {ckpt_path}: no such file (or use last or best, the latest run's)")
        run = Path(ckpt_path).resolve().parents[1] if ckpt_path else None
        if ckpt_path:
            check_checkpoint_file(ckpt_path)  # refused before LightningCLI parses its hyperparameters, if not plain
        if self.config.subcommand == "fit" and runs is not None and run and run.parent == runs.resolve():
            logger.init_args.version = run.name.removeprefix("version_")
            self.save_config_kwargs["overwrite"] = True
            print(f"Resuming {run.name} from {ckpt_path}")
        given = self.config.clone()
        super()._parse_ckpt_path()
        self._check_not_overridden(given)

    def _resume_requeued_job(self, section: Any, runs: Path) -> None:
        """Point a requeued SLURM job's `fit` at the newest checkpoint of the run it trained before (the same command,
        requeued, goes on), or let it start a new run when it saved none."""
        job = slurm_job()
        run = run_of_job(runs, job)
        found = newest_loadable(run / "checkpoints", set_aside=rank_zero_only.rank == 0) if run else None
        if found is None:
            print(f"SLURM requeued job {job}, which had saved no checkpoint under {runs}: starting a new run")
            return
        print(f"SLURM requeued job {job}: it goes on with its run {run}")
        section.ckpt_path = str(found)

    def _check_not_overridden(self, given: Any) -> None:
        """Compare the `model` options as given with those the checkpoint's hyperparameters replaced (LightningCLI
        applies them last): one given on the command line is a ConfigError, rather than a run at another value than
        the one asked; those of config files are listed in one line."""
        subcommand = str(self.config.get("subcommand"))
        before, after = (dict(config[subcommand].model.items()) for config in (given, self.config))
        replaced = {
            key: (value, after.get(key))
            for key, value in before.items()
            if value is not None and value != after.get(key)
        }
        asked = {arg.partition("=")[0].removeprefix("--model.") for arg in sys.argv[1:] if arg.startswith("--model.")}
        for key, (value, held) in sorted(replaced.items()):
            if key in asked or any(key.startswith(f"{option}.") for option in asked):
                raise ConfigError(
                    f"--model.{key} {shown(value)}: the checkpoint of --ckpt_path has model.{key} {shown(held)}, and a "
                    "checkpoint's hyperparameters replace the command line's; drop the option (or train a new run "
                    "with it)"
                )
        if replaced:
            shown_all = [
                f"model.{key} {shown(value)} -> {shown(held)}" for key, (value, held) in sorted(replaced.items())
            ]
            more = f" and {len(shown_all) - 5} more" if len(shown_all) > 5 else ""
            print(f"The checkpoint's hyperparameters replace the config's {', '.join(shown_all[:5])}{more}")

    def before_instantiate_classes(self) -> None:
        # What the config files, the command line and a checkpoint's hyperparameters gave, before anything is built.
        check_config(self.config.get(str(self.config.get("subcommand")), self.config))

    def instantiate_classes(self) -> None:
        # As LightningCLI's own, except that each interface receives its `*_args` group as one plain dict
        # (jsonargparse would pass it as flat `net_args.x` keywords). `self.config` stays as parsed, for
        # config.yaml and the checkpoint's hyperparameters.
        self._dump_config()
        config = self.config.clone()
        section = config.get(str(self.subcommand), config)
        for key, name in NAME_KEYS.items():
            args = section[key].get(f"{name}_args")
            section[key][f"{name}_args"] = args.as_dict() if args is not None else {}
        try:
            self.config_init = self.parser.instantiate(config)
        except ValueError as error:  # jsonargparse wraps what a class raises, e.g. a callback in a list
            if (user_error := _user_error_in(error)) is None:
                raise
            raise user_error from error
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        # Callback groups switched off with `--early_stopping null` are left out instead of passed as None.
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if (fraction := self._get(self.config_init, "gpu_memory_fraction")) is not None:
            callbacks.append(GPUMemoryFraction(fraction))
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        # Lightning allows one progress bar: none when switched off, and the user's own one when given.
        if config.get("enable_progress_bar") is False or any(
            isinstance(c, LightningProgressBar) for c in config.get("callbacks") or []
        ):
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        if config.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"--trainer.accelerator {config['accelerator']}: this machine has no CUDA GPU that torch can use "
                "(see python main.py env); use --trainer.accelerator auto or cpu"
            )
        config["plugins"] = with_checked_loading(config.get("plugins"))
        logger = config.get("logger")
        if config.get("default_root_dir") == RUNS_DIR and getattr(logger, "log_dir", None):
            # Where Lightning writes the checkpoint of a SLURM pre-emption (SIGUSR1): beside this run's last.ckpt.
            config["default_root_dir"] = str(Path(logger.log_dir) / "checkpoints")
        trainer = self._instantiate_trainer(config, [c for c in callbacks if c is not None])
        check_checkpoint_reading(trainer.strategy)
        if trainer.logger is not None:
            # Fix the run's version now: ddp_spawn's processes would otherwise each pick a new one, per stage.
            trainer.logger.version  # noqa: B018
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand not in FINDERS:
            return super()._run_subcommand(subcommand)
        results = getattr(self, subcommand)(**self._prepare_subcommand_kwargs(subcommand))
        if directory := run_dir(self.trainer):
            # Lightning's tuner leaves an empty hparams.yaml, which the logger would then never overwrite.
            (directory / "hparams.yaml").unlink(missing_ok=True)
        self._report({subcommand: results})
        if self._get(self.config, "train"):
            self.trainer.fit(self.model, datamodule=self.datamodule)
            self.after_fit()

    def lr_find(self, **kwargs: Any) -> dict[str, Any]:
        """Lightning's learning-rate range test: print the suggestion and save the loss-versus-lr plot."""
        finder = Tuner(self.trainer).lr_find(**kwargs)
        suggestion = finder.suggestion() if finder is not None else None
        if suggestion is None and self._get(self.config, "train"):
            raise ConfigError(
                "the learning-rate finder has no suggestion (the loss never fell steadily): "
                "widen --min_lr/--max_lr or raise --num_training"
            )
        results: dict[str, Any] = {"suggested_lr": suggestion}
        if finder is not None and (directory := run_dir(self.trainer)):
            results["plot"] = str(directory / "lr_find.png")
            finder.plot(suggest=True).savefig(results["plot"])
        print(f"Suggested learning rate: {suggestion:.3g}" if suggestion else "No suggested learning rate")
        return results

    def scale_batch_size(self, **kwargs: Any) -> dict[str, Any]:
        """Lightning's batch-size finder: the largest batch size that fits in memory, grown from `init_val`."""
        size = Tuner(self.trainer).scale_batch_size(**kwargs)
        print(f"Suggested batch size: {size}")
        return {"suggested_batch_size": size}

    def before_fit(self) -> None:
        self.phase = "fit"

    def before_validate(self) -> None:
        self.phase = "validate"

    def before_test(self) -> None:
        self.phase = "test"

    def before_predict(self) -> None:
        self.phase = "predict"

    def stopped(self) -> str:
        """What a SIGTERM stopped, what was kept and what was not done, in one line."""
        trainer = getattr(self, "trainer", None)
        if self.phase == "fit" and trainer is not None and trainer.global_step > 0 and trainer.checkpoint_callback:
            return (
                f"stopped by SIGTERM at training step {trainer.global_step}; resume with the same command and "
                f"--ckpt_path last ({trainer.checkpoint_callback.last_model_path or 'last.ckpt'})"
            )
        if self.phase == "after fit":
            return (
                "stopped by SIGTERM after training had finished (its checkpoints are kept): the validation and test "
                "of the best checkpoint, results.json and model.pth were not done; run them with "
                f"python main.py test --model {self.model.hparams.net} --ckpt_path best"
            )
        if self.phase in ("fit", "setup"):
            return "stopped by SIGTERM before the first training step; nothing was saved"
        return f"stopped by SIGTERM during {self.phase}; its results were not written"

    def _stop_if_terminated(self) -> None:
        """Raise the SIGTERM that the trainer received where it does not stop for one (the last batch, predict)."""
        if self.trainer.received_sigterm:
            raise SIGTERMException

    def after_fit(self) -> None:
        self.phase = "after fit"
        self._stop_if_terminated()
        # The first ModelCheckpoint (ours, unless the user added one): other Checkpoint callbacks keep no best.
        saving = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        best = (saving[0].best_model_path if saving else "") or None
        if isinstance(self.trainer.strategy.launcher, _MultiProcessingLauncher) and best:
            # ddp_spawn trained copies of the model in child processes, which also saved the config without
            # telling this one: take the trained network from its checkpoint.
            self.model = MInterface.load_from_checkpoint(best)
            for callback in self.trainer.callbacks:
                if isinstance(callback, SaveConfigCallback):
                    callback.already_saved = True
        run = {"model": self.model, "datamodule": self.datamodule, "ckpt_path": best}
        # Training metrics and the best validation accuracy exist only now, before validate/test replace them.
        results: dict[str, Any] = {"best_checkpoint": best, "fit": self._metrics("")}
        results["validation"] = self.trainer.validate(**run, verbose=False)[0]
        self._stop_if_terminated()
        if self._get(self.config, "test_after_fit"):
            results["test"] = self.trainer.test(**run)[0]
            self._stop_if_terminated()
        if directory := run_dir(self.trainer):
            # Seed 001's save step: the best network's weights, loadable without Lightning.
            results["state_dict"] = str(directory / "model.pth")
            weights = self.model.net.state_dict()
            write_atomically(Path(results["state_dict"]), lambda file: torch.save(weights, file))
        self._report(results)

    def after_validate(self) -> None:
        self._stop_if_terminated()
        self._report({"validation": self._metrics("val/")})

    def after_test(self) -> None:
        self._stop_if_terminated()
        self._report({"test": self._metrics("test/")})

    def after_predict(self) -> None:
        self._stop_if_terminated()
        outputs = torch.cat(self.trainer.predict_loop.predictions).float()
        results: dict[str, Any] = {"num_predictions": len(outputs)}
        if directory := run_dir(self.trainer):
            results["predictions"] = str(directory / "predictions.csv")
            self._write_predictions(outputs, directory / "predictions.csv")
        self._report(results)

    def _write_predictions(self, outputs: torch.Tensor, path: Path) -> None:
        """One row per predicted item: its id, and the predicted class, its name and probability, or the values."""
        ids = item_ids(self.datamodule.predict_set)
        rows = io.StringIO()
        writer = csv.writer(rows)
        if self.model.classification:
            # CrossEntropyLoss takes logits, NLLLoss log-probabilities: both become probabilities here.
            probabilities = outputs.exp() if self.model.hparams.loss == "NLLLoss" else outputs.softmax(dim=1)
            probability, predicted = probabilities.max(dim=1)
            classes = self.datamodule.classes or [str(i) for i in range(outputs.shape[1])]
            writer.writerow(["id", "prediction", "class", "probability"])
            for row in zip(ids, predicted.tolist(), probability.tolist(), strict=True):
                writer.writerow([row[0], row[1], classes[row[1]], f"{row[2]:.6g}"])
        else:
            values = outputs.flatten(1)
            columns = ["prediction"] if values.shape[1] == 1 else [f"prediction_{i}" for i in range(values.shape[1])]
            writer.writerow(["id", *columns])
            for item, row in zip(ids, values.tolist(), strict=True):
                writer.writerow([item, *(f"{v:.6g}" for v in row)])
        write_atomically(path, lambda file: file.write(rows.getvalue().encode()))

    def _metrics(self, prefix: str) -> dict[str, float]:
        return {k: v.item() for k, v in self.trainer.callback_metrics.items() if k.startswith(prefix)}

    def _report(self, results: dict[str, Any]) -> None:
        """Print what was learned, write results.json into the run directory (none under fast_dev_run), and give
        TensorBoard's HPARAMS tab the final metrics next to the hyperparameters."""
        if not self.trainer.is_global_zero:
            return
        self.results.update(results)
        net = self.model.net
        if sum(p.numel() for p in net.parameters()) <= SMALL_MODEL:
            learned = {name: p.detach().cpu().tolist() for name, p in net.named_parameters()}
            self.results["parameters"] = learned
            dataset = getattr(self.datamodule, "dataset", None)
            true = {name: getattr(dataset, name) for name in learned if isinstance(getattr(dataset, name, None), float)}
            if true:
                self.results["true_parameters"] = true
            for name, value in learned.items():
                shown = ", ".join(f"{v:.4f}" for v in value)
                print(f"learned {name}: {shown}" + (f"  (true: {true[name]})" if name in true else ""))
        directory = run_dir(self.trainer)
        if directory is None:
            return
        text = json.dumps(_finite(self.results), indent=2) + "\n"
        write_atomically(directory / "results.json", lambda file: file.write(text.encode()))
        final = {f"hp/{k}": v for part in ("fit", "validation", "test") for k, v in self.results.get(part, {}).items()}
        if self.trainer.logger is not None:
            self.trainer.logger.log_hyperparams({**self.datamodule.hparams, **self.model.hparams}, final or None)
            self.trainer.logger.save()
        print(f"Run written to {directory}")
        print(f"Open TensorBoard with: tensorboard --logdir {directory.parent}")


def _finite(value: Any) -> Any:
    """`value` with NaN/inf floats as strings, since JSON has no literal for them."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv` (default: the command line)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["env"]:
        from environment import environment_report

        print(environment_report())
        return
    if argv[:1] == ["export"]:
        import export

        sys.exit(export.main(argv[1:]))
    signal.signal(signal.SIGTERM, _terminate)
    try:
        argv = normalize_argv(argv)
        sys.argv[1:] = argv
        TemplateCLI(*selected_names(argv))
    except (ConfigError, MisconfigurationException) as error:
        # Lightning's MisconfigurationException is a user's setting it cannot run with, e.g. a GPU on a CPU machine.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (OSError, RuntimeError) as error:
        # What Lightning, TensorBoard or torch.save write themselves (the run directory, config.yaml, event files)
        # where the disk is full, the place read-only or a file in the way.
        if (refused := write_error("write", None, error)) is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        sys.exit(2)
    except UnicodeDecodeError as error:
        # jsonargparse reads a file given as an option's value (a sub-config) as text without checking that it is.
        print(f"error: {_binary_value(argv)} is not YAML text ({error.reason}); give a YAML file", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        cli = TemplateCLI.current
        print(f"error: {cli.stopped() if cli else 'stopped by SIGTERM before the run began'}", file=sys.stderr)
        sys.exit(SIGTERM_STATUS)


def _binary_value(argv: list[str]) -> str:
    """The first option value in `argv` that names a file which is not UTF-8 text, other than a checkpoint."""
    tokens = [part for token in argv for part in token.split("=", 1)]
    for option, value in zip(tokens, tokens[1:], strict=False):
        if option == "--ckpt_path" or not Path(value).is_file():
            continue
        try:
            with Path(value).open("rb") as file:
                file.read(1 << 17).decode("utf-8")
        except UnicodeDecodeError as error:
            if error.start < (1 << 17) - 4:  # not a character cut in two at the end of what was read
                return f"{option} {value}"
        except OSError:  # unreadable: not the file jsonargparse read
            continue
    return "a file given as an option's value"


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM outside the trainer's own handling (which stops at the next step and then raises the same)."""
    if signal.getsignal(signal.SIGTERM) is _terminate:  # not called by the trainer's handler, which calls it too
        raise SIGTERMException


if __name__ == "__main__":
    main()
