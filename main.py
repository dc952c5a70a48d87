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

import inspect
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.tuner import Tuner
from torch import nn
from torch.utils.data import Dataset

from callbacks import ClassificationFigures, GPUMemoryFraction, TrainingSummary
from data.data_interface import DInterface
from model.model_interface import DATA_DIMS, MInterface
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
    parser itself, and a checkpoint given with `--ckpt_path` wins over all, as LightningCLI applies its
    hyperparameters last.
    """
    names = {
        "model": inspect.signature(MInterface).parameters["net"].default,
        "data": inspect.signature(DInterface).parameters["dataset"].default,
    }
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
            hparams = torch.load(value, map_location="cpu", weights_only=True).get("hyper_parameters")
            found = {"model": _name(hparams, "model")}
        elif key in ("-c", "--config") and Path(value).is_file():
            config = yaml.safe_load(Path(value).read_text())
            found = {group: _name(config.get(group), group) for group in names} if isinstance(config, dict) else {}
        elif key in SHORTHANDS and Path(value).is_file():
            found = {key[2:]: _name(yaml.safe_load(Path(value).read_text()), key[2:])}
        names.update({group: name for group, name in found.items() if name})
    return names["model"], names["data"]


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
            trainer_defaults={"logger": logger, "default_root_dir": RUNS_DIR},
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
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
            "classification_figures": (ClassificationFigures, {}),
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
        fit = LightningCLI.subcommands()["fit"]
        return {**LightningCLI.subcommands(), **{name: fit | {"dataloaders"} | skip for name, skip in FINDERS.items()}}

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
        self.config_init = self.parser.instantiate(config)
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
        trainer = self._instantiate_trainer(config, [c for c in callbacks if c is not None])
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
        self.datamodule.hparams.batch_size = size
        print(f"Suggested batch size: {size}")
        return {"suggested_batch_size": size}

    def after_fit(self) -> None:
        best = self.trainer.checkpoint_callback.best_model_path or None
        if self.model.net is None and best:
            # Under ddp_spawn, the network was built from the data and trained in the spawned processes only,
            # which also saved the config without telling this one.
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
        predictions = torch.cat(self.trainer.predict_loop.predictions)
        results: dict[str, Any] = {"num_predictions": len(predictions)}
        if directory := run_dir(self.trainer):
            results["predictions"] = str(directory / "predictions.pt")
            torch.save(predictions, results["predictions"])
        self._report(results)

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
    argv = normalize_argv(argv)
    sys.argv[1:] = argv
    try:
        TemplateCLI(*selected_names(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
