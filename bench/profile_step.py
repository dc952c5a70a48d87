"""Where a training step's time goes: the MLP on MNIST, one process, three ways, from the raw step up.

    python bench/profile_step.py [--data-root ../shared/data] [--epochs 3]

1. raw: the network's own work (forward, loss, backward, Adam) on batches sliced from memory;
2. lightning: `Trainer.fit` of MInterface on DInterface (in memory), with no logger, checkpoint, progress
   bar or callback: Lightning's loop and the module's training step (loss log, train accuracy);
3. template: the same with what `python main.py` adds: TensorBoard, checkpointing, early stopping, the LR
   monitor, the training summary, the NaN guard, the progress bar, the classification figures;
4. template-grouped: the template with `--data.group_batches 8`: Lightning's loop runs once per 8 batches, the
   module takes the 8 optimizer steps (the same steps and weights).
The same batches, in the same order, in each. Prints milliseconds per step (median over the epochs after the
first) and the differences, which are what Lightning and the template's extras cost per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from bench.timing import BenchTiming  # noqa: E402
from callbacks import ClassificationFigures, FiniteLossGuard, ProgressBar, ResumableCheckpoint, TrainingSummary  # noqa: E402
from data.data_interface import DInterface  # noqa: E402
from model.mlp import MLP  # noqa: E402
from model.model_interface import MInterface  # noqa: E402


def mnist(root: str, group: int = 1) -> DInterface:
    """The MLP workload's data, as configs/mlp.yaml with --data mnist serves it (in memory)."""
    pl.seed_everything(42, verbose=False)
    return DInterface(
        dataset="mnist", dataset_args={"root": root}, val_fraction=0.1, batch_size=64, group_batches=group
    )


def raw(root: str, epochs: int) -> tuple[list[float], int]:
    data = mnist(root)
    data.setup("fit")
    loader = data.train_dataloader()
    net = MLP(input_size=784, output_size=10, hidden_sizes=[256])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times, len(loader)


def fitted(root: str, epochs: int, template: bool, directory: str, group: int = 1) -> tuple[list[float], int]:
    """The epochs' times and the optimizer steps per epoch."""
    data = mnist(root, group)
    model = MInterface(net="mlp", net_args={"hidden_sizes": [256]}, loss="CrossEntropyLoss", optimizer="Adam", lr=1e-3)
    timing = BenchTiming(str(Path(directory) / "timing.json"))
    callbacks: list[pl.Callback] = [timing]
    if template:
        callbacks += [
            ResumableCheckpoint(dirpath=directory, monitor="val/loss", filename="best-{epoch}", save_last=True),
            EarlyStopping(monitor="val/loss", patience=10),
            LearningRateMonitor(logging_interval="step"),
            TrainingSummary(),
            FiniteLossGuard(),
            ClassificationFigures(),
            ProgressBar(),
        ]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(directory) if template else False,
        enable_checkpointing=template,
        enable_progress_bar=template,
        enable_model_summary=template,
        callbacks=callbacks,
    )
    trainer.fit(model, data)
    return timing.data["epoch_times"], trainer.global_step // epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not (Path(args.data_root) / "MNIST" / "raw").is_dir():
        sys.exit(f"no MNIST/raw under {Path(args.data_root).resolve()}: pass --data-root")
    with tempfile.TemporaryDirectory() as directory:
        runs = {
            "raw": raw(args.data_root, args.epochs),
            "lightning": fitted(args.data_root, args.epochs, False, directory),
            "template": fitted(args.data_root, args.epochs, True, directory),
            "template-grouped": fitted(args.data_root, args.epochs, True, directory, group=8),
        }
    per_step = {name: statistics.median(times[1:] or times) / steps * 1000 for name, (times, steps) in runs.items()}
    print(f"ms per training step (median of the epochs after the first; {runs['raw'][1]} steps per epoch):")
    previous = None
    for name, ms in per_step.items():
        extra = f"  ({ms - per_step[previous]:+.3f} over {previous})" if previous else ""
        print(f"  {name:16} {ms:.3f}{extra}")
        previous = name


if __name__ == "__main__":
    main()
