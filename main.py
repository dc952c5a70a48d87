"""Entry point: a LightningCLI over `MInterface` and `DInterface`.

    python main.py --model linear                      # fit with configs/linear.yaml
    python main.py fit --config configs/linear.yaml --trainer.max_epochs=50 --model.lr=0.1
    python main.py test --config configs/linear.yaml --ckpt_path runs/linear/version_0/checkpoints/last.ckpt
    python main.py lr_find --model mlp --train true     # Lightning's LR finder, then train at its suggestion
    python main.py env                                  # versions, devices and GPU memory
    python main.py export --ckpt_path runs/mlp/version_0/checkpoints/last.ckpt --out_dir exported

With no subcommand, `fit` is meant. `--model NAME` selects `model/NAME.py` and starts from
`configs/NAME.yaml` when it exists; `--data NAME` selects `data/NAME.py` (see command_line.py). The
chosen model's and dataset's constructor arguments become `--model.net_args.*` and `--data.dataset_args.*`, typed
and checked. What a run writes (results.json, model.pth, predictions.csv) comes from callbacks/results.py and its
neighbours; what `--ckpt_path last|best` means, from runs.py.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import jsonargparse
import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.utils.data import Dataset

from callbacks import (
    ClassificationFigures,
    FiniteLossGuard,
    GPUMemoryFraction,
    LearnedParameters,
    PredictionsWriter,
    ProcessGroupTeardown,
    ProgressBar,
    ResumableCheckpoint,
    RunResults,
    TrainingSummary,
)
from callbacks.checkpointing import check_checkpoint_reading, with_checked_loading
from callbacks.results import report
from callbacks.run_directory import RunDirectory
from command_line import NAME_KEYS, CommandLine, overview, read_command_line
from data.data_interface import DInterface
from data_contract import size_defaults
from files import write_error
from finders import TemplateTrainer
from lightning_internals import parser_that_failed
from model.model_interface import MInterface
from runs import RUNS_DIR, resolve_ckpt_path, run_of_checkpoint
from trust import check_config, shown
from utils import ConfigError, find_class

# The checkpoint plugin, as config.yaml can write it (an instance would be a warning on every run).
ATOMIC_CHECKPOINTS = {"class_path": "callbacks.AtomicCheckpointIO"}
# Callbacks in every run, each its own option group: `--early_stopping.patience 3`, `--early_stopping null` for none.
OPTIONAL_CALLBACKS = {
    "early_stopping": (EarlyStopping, {"monitor": "val/loss", "patience": 10}),
    "lr_monitor": (LearningRateMonitor, {"logging_interval": "step"}),
    "training_summary": (TrainingSummary, {}),
    "finite_loss": (FiniteLossGuard, {}),
    "classification_figures": (ClassificationFigures, {}),
    "progress_bar": (ProgressBar, {}),
}
DESCRIPTION = "Train, evaluate and tune a model of model/ on a dataset of data/, with Lightning."
# The exit status of a run stopped by SIGTERM, as a shell reports a process that SIGTERM killed.
SIGTERM_STATUS = 128 + signal.SIGTERM


class TemplateParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one `error:` line and a pointer to `--help`, not the usage first."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parse inside a parse, whose failure jsonargparse handles
            super().error(message, ex)
        prog = parser_that_failed(ex, self).prog.replace(" [options]", "")
        sys.stderr.write(f"error: {' '.join(message.split())}\n(python {prog} --help lists the options)\n")
        self.exit(2)


class OverviewFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help layout, with the description and the overview of models and datasets kept as written."""


class TemplateCLI(LightningCLI):
    """LightningCLI with the chosen model's and dataset's arguments, the template's callbacks, `--ckpt_path
    last|best`, and after `fit` a validation and test of the best checkpoint."""

    current: TemplateCLI | None = None  # the CLI of this process, for main()'s messages

    def __init__(self, command_line: CommandLine, **kwargs: Any) -> None:
        self.argv, self.configs = command_line.argv, command_line.configs
        self.held_checkpoint = command_line.checkpoint  # the file whose data `--ckpt_path last|best` brought
        self.net_class = find_class("model", command_line.model, nn.Module)
        self.dataset_class = find_class("data", command_line.data, Dataset)
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": RUNS_DIR, "name": command_line.model, "default_hp_metric": False},
        }
        self.phase = "setup"  # what the run is doing, for the message of a SIGTERM (see `stopped`)
        TemplateCLI.current = self
        parser_kwargs = {
            "description": DESCRIPTION,
            "epilog": overview(),
            "formatter_class": OverviewFormatter,
            **kwargs.pop("parser_kwargs", {}),
        }
        for name in self.subcommands():  # a short usage line: the options follow, grouped, the model's first
            parser_kwargs[name] = {"usage": "%(prog)s [options]", **parser_kwargs.get(name, {})}
        super().__init__(
            MInterface,
            DInterface,
            trainer_class=TemplateTrainer,
            trainer_defaults={
                "logger": logger,
                "default_root_dir": RUNS_DIR,
                "plugins": [ATOMIC_CHECKPOINTS],
                "callbacks": [RunResults(), LearnedParameters(), PredictionsWriter(), ProcessGroupTeardown()],
            },
            seed_everything_default=42,
            auto_configure_optimizers=False,
            load_from_checkpoint_support=False,  # hyperparameters are plain values: checkpoints load without it
            parser_class=TemplateParser,
            parser_kwargs=parser_kwargs,
            save_config_callback=RunDirectory,
            **kwargs,
        )

    # --- the options ---------------------------------------------------------------------------------------------

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The trainer's options, and the interfaces' with `model.net_args`/`data.dataset_args` taken from the chosen
        network's and dataset's constructors (typed, checked and listed in --help): LightningCLI's own would make them
        one untyped dict."""
        chosen = (("model", MInterface, self.net_class), ("data", DInterface, self.dataset_class))
        for key, _, cls in chosen:  # first, so that --help shows the chosen network's and dataset's own at the top
            parser.add_class_arguments(
                cls, f"{key}.{NAME_KEYS[key]}_args", skip={"train"}, instantiate=False, fail_untyped=False,
                sub_configs=True,
            )
        for key, interface, _ in chosen:
            parser.add_class_arguments(
                interface, key, skip={f"{NAME_KEYS[key]}_args"}, fail_untyped=False, sub_configs=True
            )
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        # Unset, a network's size parameters are filled in from the data (see data_contract.py).
        parser.set_defaults(size_defaults(self.net_class))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.monitor": "val/loss", "checkpoint.filename": "best-{epoch}", "checkpoint.save_last": True}
        )
        for key, (cls, defaults) in OPTIONAL_CALLBACKS.items():
            # Not Lightning's callback groups, which cannot be switched off: `instantiate_trainer` adds these.
            parser.add_subclass_arguments(cls, key, required=False, fail_untyped=False)
            parser.set_defaults({key: {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": defaults}})
        parser.add_argument(
            "--gpu_memory_fraction",
            type=float | None,
            default=None,
            help="Share of each GPU's memory this run may allocate, in (0, 1]; null for no limit.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="Test the best checkpoint once fitting ends (validate, test and predict ignore it).",
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # No `--weights_only`: every checkpoint is read weights-only (AtomicCheckpointIO), whatever a config says.
        base = {name: skip | {"weights_only"} for name, skip in LightningCLI.subcommands().items()}
        finders = {name: {"model", "datamodule"} for name in ("lr_find", "scale_batch_size")}
        return {**base, **finders}

    # --- from the parsed options to the objects ---------------------------------------------------------------------

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then turn `--ckpt_path last|best` into the file it means, checked before LightningCLI applies its
        hyperparameters; `fit` from a checkpoint of a run goes on in that run's directory."""
        super().parse_arguments(parser, args)
        if self.configs and rank_zero_only.rank == 0:
            print(f"Config files: {', '.join(self.configs)}")
        subcommand = str(self.config.get("subcommand"))
        section = self.config[subcommand]
        logger = section.trainer.get("logger")
        loggers = logger if isinstance(logger, list) else [logger]
        runs = _runs_folder(loggers[0]) if loggers else None  # the first logger names the run
        for each in loggers:
            _with_local_store(each)
        self.given = self.config.clone()  # the model's options before a checkpoint's hyperparameters replace them
        if "ckpt_path" not in section:  # the finders
            return
        ckpt_path = resolve_ckpt_path(subcommand, section.ckpt_path, runs, rank=rank_zero_only.rank)
        section.ckpt_path = self.given[subcommand].ckpt_path = ckpt_path
        if self.held_checkpoint and ckpt_path and Path(ckpt_path).resolve() != Path(self.held_checkpoint).resolve():
            raise ConfigError(
                f"--ckpt_path means {ckpt_path} under this logger's folder, but the data module was rebuilt from "
                f"{self.held_checkpoint} (runs/<model>'s latest run); give the checkpoint's path instead"
            )
        if not ckpt_path or subcommand != "fit":
            return
        # A fit from a checkpoint may go on in its run's directory, over that run's config.yaml.
        self.save_config_kwargs["overwrite"] = True
        if (run := run_of_checkpoint(ckpt_path, runs)) is not None:
            for each in loggers:
                if _runs_folder(each) == runs:  # a second logger in the same folder goes on there too
                    each.init_args.version = run.name.removeprefix("version_")
            print(f"Resuming {run.name} from {ckpt_path}")

    def before_instantiate_classes(self) -> None:
        # What the config files, the command line and a checkpoint's hyperparameters gave, before anything is built.
        section = self._section(self.config)
        check_config(section)
        self._check_not_overridden(self._section(self.given).model, section.model)
        for interface in (MInterface, DInterface):  # jsonargparse keeps one per class: registering again replaces it
            jsonargparse.add_instantiator(_with_args_as_dict, interface, subclasses=False)

    def _check_not_overridden(self, given: Any, applied: Any) -> None:
        """Compare the `model` options as given with those the checkpoint's hyperparameters replaced (LightningCLI
        applies them last): one given on the command line is a ConfigError, rather than a run at another value than
        the one asked; those of config files are listed in one line."""
        before, after = dict(given.items()), dict(applied.items())
        replaced = {
            key: (value, after.get(key))
            for key, value in before.items()
            if value is not None and value != after.get(key)
        }
        asked = {arg.partition("=")[0].removeprefix("--model.") for arg in self.argv if arg.startswith("--model.")}
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

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """LightningCLI's trainer, with the callback groups left on, the run's checkpoints folder for a SLURM
        pre-emption's checkpoint, and checkpoints loaded weights-only."""
        section = self._section(self.config_init)
        config = {**section.trainer, **kwargs}
        callbacks = [section[key] for key in OPTIONAL_CALLBACKS if section.get(key) is not None]
        if (fraction := section.get("gpu_memory_fraction")) is not None:
            callbacks.append(GPUMemoryFraction(fraction))
        if not config.get("logger"):  # LearningRateMonitor refuses to run without a logger to write to
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        # Lightning allows one progress bar: none when switched off, and the user's own one when given.
        if config.get("enable_progress_bar") is False or any(isinstance(c, LightningProgressBar) for c in given):
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        if config.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"--trainer.accelerator {config['accelerator']}: this machine has no CUDA GPU that torch can use "
                "(see python main.py env); use --trainer.accelerator auto or cpu"
            )
        logger = config.get("logger")
        first = logger[0] if isinstance(logger, list) and logger else logger
        root = config.get("default_root_dir")
        if root == RUNS_DIR and getattr(first, "log_dir", None):
            # Where Lightning writes the checkpoint of a SLURM pre-emption (SIGUSR1): beside this run's last.ckpt.
            root = str(Path(first.log_dir) / "checkpoints")
        trainer = super().instantiate_trainer(
            **kwargs,
            callbacks=[*given, *callbacks],
            plugins=with_checked_loading(config.get("plugins")),
            default_root_dir=root,
        )
        check_checkpoint_reading(trainer.strategy)
        for logger in trainer.loggers:
            # Fix the run's version now: ddp_spawn's processes would otherwise each pick a new one, per stage, and
            # a second logger one past the first's folder.
            logger.version  # noqa: B018
        for callback in trainer.callbacks:
            if isinstance(callback, RunDirectory):
                callback.expect(trainer)  # a run that fails before training removes the folder it created
        return trainer

    def _section(self, config: Any) -> Any:
        """The part of `config` for the subcommand that runs."""
        return config.get(str(self.subcommand or config.get("subcommand")), config)

    # --- running ---------------------------------------------------------------------------------------------------

    def before_fit(self) -> None:
        self.phase = "fit"

    def before_validate(self) -> None:
        self.phase = "validate"

    def before_test(self) -> None:
        self.phase = "test"

    def before_predict(self) -> None:
        self.phase = "predict"

    def before_lr_find(self) -> None:
        self.phase = "fit"  # its trial steps save nothing, and with --train it fits

    before_scale_batch_size = before_lr_find

    def after_fit(self) -> None:
        """Validate and test the best checkpoint (the first ModelCheckpoint's), for results.json and model.pth."""
        self.phase = "after fit"
        self._stop_if_terminated()
        saving = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        best = (saving[0].best_model_path if saving else "") or None
        for callback in self.trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                # fit saved it: under ddp_spawn in processes of its own, which this one does not hear from
                callback.already_saved = True
        run = {"model": self.model, "datamodule": self.datamodule, "ckpt_path": best}
        self.trainer.validate(**run, verbose=False)
        self._stop_if_terminated()
        if self._section(self.config).test_after_fit:
            self.trainer.test(**run)
            self._stop_if_terminated()
        report(self.trainer)

    def after_lr_find(self) -> None:
        if self._section(self.config).train:
            self.after_fit()
        else:
            self._stop_if_terminated()
            report(self.trainer)

    after_scale_batch_size = after_lr_find

    def after_validate(self) -> None:
        self._stop_if_terminated()
        report(self.trainer)

    after_test = after_predict = after_validate

    def _stop_if_terminated(self) -> None:
        """Raise the SIGTERM that the trainer received where it does not stop for one (the last batch, predict)."""
        if self.trainer.received_sigterm:
            raise SIGTERMException

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


def _runs_folder(logger: Any) -> Path | None:
    """runs/<model>: where the configured logger keeps its runs as version_N folders (TensorBoard's and CSV's
    `save_dir/name`), or None for a logger that keeps them otherwise, or none."""
    class_path = getattr(logger, "class_path", None)
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)  # imported by the parse already, which trust.py allowed
    if not (isinstance(cls, type) and issubclass(cls, (TensorBoardLogger, CSVLogger))):
        return None
    init = logger.init_args
    return Path(init.save_dir) / init.name if init.get("save_dir") and init.get("name") else None


def _with_local_store(logger: Any) -> None:
    """Give an MLflow logger without a tracking_uri a local database under its save_dir (runs/mlflow.db): MLflow's
    own default, a folder of files, is refused by MLflow 3. Said in one line, and recorded in config.yaml."""
    if not str(getattr(logger, "class_path", "")).endswith(".MLFlowLogger") or logger.init_args.get("tracking_uri"):
        return
    store = f"sqlite:///{Path(logger.init_args.get('save_dir') or RUNS_DIR) / 'mlflow.db'}"
    logger.init_args.tracking_uri = store
    if rank_zero_only.rank == 0:
        print(f"MLflow keeps its runs in {store} (--trainer.logger.tracking_uri sets another store)")


def _with_args_as_dict(class_type: type, *args: Any, **kwargs: Any) -> Any:
    """Build an interface with the chosen class's arguments as one dict (`net_args`, `dataset_args`), which
    jsonargparse passes as flat `net_args.NAME` keywords."""
    group = "net_args" if issubclass(class_type, MInterface) else "dataset_args"
    grouped: dict[str, Any] = {}
    for key in [key for key in kwargs if key.startswith(f"{group}.")]:
        *parents, name = key.split(".")[1:]
        place = grouped
        for parent in parents:
            place = place.setdefault(parent, {})
        place[name] = _as_yaml(kwargs.pop(key))
    return class_type(*args, **kwargs, **{group: grouped})


def _as_yaml(value: Any) -> Any:
    """`value` as config.yaml writes it, tuples as lists: so the hyperparameters and the config hold the same."""
    if isinstance(value, (list, tuple)):
        return [_as_yaml(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_yaml(item) for key, item in value.items()}
    return value


def _user_error_in(error: BaseException | None) -> ConfigError | None:
    """The ConfigError that `error` was raised from, if any."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    return error


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
    if argv[:1] in (["cv"], ["repeat"], ["aggregate"]):
        import experiments

        sys.exit(experiments.main(argv))
    if argv[:1] == ["sweep"]:
        import sweep

        sys.exit(sweep.main(argv))
    signal.signal(signal.SIGTERM, _terminate)
    try:
        command_line = read_command_line(argv)
        argv = sys.argv[1:] = command_line.argv  # DDP starts its other processes with this command line
        TemplateCLI(command_line)
    except (ConfigError, MisconfigurationException) as error:
        # Lightning's MisconfigurationException is a user's setting it cannot run with, e.g. a GPU on a CPU machine.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except UnicodeDecodeError as error:
        # jsonargparse reads a file given as an option's value (a sub-config) as text without checking that it is.
        print(f"error: {_binary_value(argv)} is not YAML text ({error.reason}); give a YAML file", file=sys.stderr)
        sys.exit(2)
    except ValueError as error:  # jsonargparse wraps what a class raises when it builds it, e.g. a callback in a list
        if (user_error := _user_error_in(error)) is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    except (OSError, RuntimeError) as error:
        # What Lightning, TensorBoard or torch.save write themselves (the run directory, config.yaml, event files)
        # where the disk is full, the place read-only or a file in the way.
        if (refused := write_error("write", None, error)) is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
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
    try:
        main()
    finally:
        # What is left is the interpreter's shutdown (the run's files are written and closed), whose garbage
        # collections walk every object torch and Lightning made: over a second. Frozen, they are left to the
        # operating system with the rest of the process's memory.
        gc.freeze()
