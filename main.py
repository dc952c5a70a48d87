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
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import MisconfigurationException
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
from data.data_interface import DInterface, item_ids
from model.model_interface import DATA_DIMS, MInterface
from trust import check_checkpoint_file, check_config, load_checkpoint, load_yaml_file
from utils import ROOT, ConfigError, available, find_class, run_dir

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


def _is_config_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml", ".json")) or Path(value).is_file()


def normalize_argv(argv: list[str]) -> list[str]:
    """Insert the default `fit` subcommand and expand the `--model NAME` / `--data NAME` shorthands and aliases.

    `--model NAME` means `configs/NAME.yaml` when that exists, plus `model/NAME.py` when that exists (so an
    experiment config like `configs/resnet.yaml` is selected by its name). Idempotent, because DDP re-launches
    this script with the rewritten `sys.argv`.
    """
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


def latest_checkpoint(runs: Path, kind: str) -> Path | None:
    """The `last` or `best` checkpoint of the latest run under `runs` (runs/<model>/version_N); None if no run."""
    versions = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: int(p.parts[-3].split("_")[-1]))
    if not versions:
        return None
    last = versions[-1]
    if kind == "last":
        return last
    states = load_checkpoint(last).get("callbacks", {})
    best = next((s.get("best_model_path") for k, s in states.items() if "Checkpoint{" in k), None)
    if not best or not Path(best).is_file():
        raise ConfigError(f"--ckpt_path best: the run in {last.parents[1]} recorded no best checkpoint; use last")
    return Path(best)


class TemplateCLI(LightningCLI):
    """LightningCLI with the chosen model's and dataset's arguments, our callbacks, and a report after each run."""

    def __init__(self, model_name: str, data_name: str, **kwargs: Any) -> None:
        self.net_class = find_class("model", model_name, nn.Module)
        self.dataset_class = find_class("data", data_name, Dataset)
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": RUNS_DIR, "name": model_name, "default_hp_metric": False},
        }
        self.results: dict[str, Any] = {}  # what results.json holds
        super().__init__(
            MInterface,
            DInterface,
            trainer_defaults={"logger": logger, "default_root_dir": RUNS_DIR, "plugins": [ATOMIC_CHECKPOINTS]},
            seed_everything_default=42,
            auto_configure_optimizers=False,
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
        ckpt_path = section.get("ckpt_path") if section else None
        logger = section.trainer.get("logger") if ckpt_path else None
        runs = Path(logger.init_args.save_dir) / logger.init_args.name if hasattr(logger, "init_args") else None
        if ckpt_path in ("last", "best") and runs is not None:
            found = latest_checkpoint(runs, ckpt_path)
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
        super()._parse_ckpt_path()

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

    def after_fit(self) -> None:
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
        if self._get(self.config, "test_after_fit"):
            results["test"] = self.trainer.test(**run)[0]
        if directory := run_dir(self.trainer):
            # Seed 001's save step: the best network's weights, loadable without Lightning.
            results["state_dict"] = str(directory / "model.pth")
            torch.save(self.model.net.state_dict(), results["state_dict"])
        self._report(results)

    def after_validate(self) -> None:
        self._report({"validation": self._metrics("val/")})

    def after_test(self) -> None:
        self._report({"test": self._metrics("test/")})

    def after_predict(self) -> None:
        outputs = torch.cat(self.trainer.predict_loop.predictions).float()
        results: dict[str, Any] = {"num_predictions": len(outputs)}
        if directory := run_dir(self.trainer):
            results["predictions"] = str(directory / "predictions.csv")
            self._write_predictions(outputs, directory / "predictions.csv")
        self._report(results)

    def _write_predictions(self, outputs: torch.Tensor, path: Path) -> None:
        """One row per predicted item: its id, and the predicted class, its name and probability, or the values."""
        ids = item_ids(self.datamodule.predict_set)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
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
                writer.writerow(
                    [
                        "id",
                        *(
                            ["prediction"]
                            if values.shape[1] == 1
                            else [f"prediction_{i}" for i in range(values.shape[1])]
                        ),
                    ]
                )
                for item, row in zip(ids, values.tolist(), strict=True):
                    writer.writerow([item, *(f"{v:.6g}" for v in row)])

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
        (directory / "results.json").write_text(json.dumps(_finite(self.results), indent=2) + "\n")
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
    argv = normalize_argv(argv)
    sys.argv[1:] = argv
    try:
        TemplateCLI(*selected_names(argv))
    except (ConfigError, MisconfigurationException) as error:
        # Lightning's MisconfigurationException is a user's setting it cannot run with, e.g. a GPU on a CPU machine.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
