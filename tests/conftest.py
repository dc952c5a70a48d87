"""Shared fixtures: running main.py in a subprocess, in a scratch directory, as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torchvision.io import write_png

ROOT = Path(__file__).resolve().parents[1]
Split = tuple[list[torch.Tensor], list[int]]  # the uint8 images of a split and their labels, in dataset order


class Run:
    """One finished `python main.py ...` command."""

    def __init__(self, proc: subprocess.CompletedProcess, cwd: Path) -> None:
        self.returncode, self.stdout, self.stderr, self.cwd = proc.returncode, proc.stdout, proc.stderr, cwd

    @property
    def run_dir(self) -> Path:
        """The run directory the command announced on its last line."""
        line = [ln for ln in self.stdout.splitlines() if ln.startswith("Run written to ")][-1]
        return self.cwd / line.removeprefix("Run written to ")

    @property
    def results(self) -> dict:
        return json.loads((self.run_dir / "results.json").read_text())


def run_main(*args: str, cwd: Path, root: Path = ROOT) -> Run:
    """Run `root/main.py` with `args` from `cwd`, so that runs/ lands there."""
    proc = subprocess.run(
        [sys.executable, str(root / "main.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Run(proc, cwd)


@pytest.fixture(scope="session")
def line_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The README's first command, `python main.py --model linear`, run once for several tests."""
    run = run_main("--model", "linear", cwd=tmp_path_factory.mktemp("line"))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the project that a test may add files to, as a user adapting the template would."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("runs", ".git", "__pycache__", ".venv", "*.egg-info"))
    return copy


class RaiseAt(pl.Callback):
    """Raise `error` once optimizer step `step` is done: a crash (or, with KeyboardInterrupt, a Ctrl+C) at that step."""

    def __init__(self, step: int, error: type[BaseException]) -> None:
        self.step, self.error = step, error

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise self.error


def patterned_images(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` uint8 images of three learnable classes (horizontal stripes, vertical stripes, checks) with noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    patterns = torch.stack([(rows // 2) % 2, (cols // 2) % 2, ((rows // 2) + (cols // 2)) % 2]).float()
    images = 0.7 * patterns[labels] + 0.3 * torch.rand(n, size, size, generator=generator)
    images = (255 * images).to(torch.uint8).unsqueeze(1).expand(n, channels, size, size)
    return images.contiguous(), labels


def write_idx(path: Path, data: torch.Tensor) -> None:
    """`data` (uint8) in the idx format of MNIST's raw files."""
    header = bytes([0, 0, 0x08, data.dim()]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    path.write_bytes(header + data.numpy().tobytes())


def write_mnist(root: Path, n_train: int = 96, n_test: int = 30) -> Path:
    """A tiny MNIST in torchvision's raw layout under `root`, with patterned images of classes 0, 1 and 2."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = patterned_images(n, seed=seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images.squeeze(1))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.to(torch.uint8))
    return root


def image_pixels(seed: int, channels: int = 3, size: int = 8) -> torch.Tensor:
    """A reproducible random uint8 image, a different one for each seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, size, size), dtype=torch.uint8, generator=generator)


def write_json_images(
    root: Path,
    name: str = "cifar10",
    n_per_class: int = 2,
    n_classes: int = 3,
    classes: list[str] | None = None,
    channels: int = 3,
    size: int = 8,
) -> dict[str, Split]:
    """Write a JSON-annotated image folder: `root`/annotations/<name>_{train,test}.json, PNGs in {train,test}_<name>/.

    Each split gets `n_per_class` images of each class, labels interleaved (0, 1, 2, 0, ...). With `classes`,
    `n_classes` is its length and both JSON files list it. Returns each split's images and labels.
    """
    n_classes = len(classes) if classes is not None else n_classes
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    written = {}
    for offset, split in enumerate(("train", "test")):
        folder = root / f"{split}_{name}"
        folder.mkdir(exist_ok=True)
        files, labels, images = [], [], []
        for i in range(n_per_class * n_classes):
            image = image_pixels(1000 * offset + i, channels, size)
            write_png(image, str(folder / f"{i:04d}.png"))
            files.append(f"{i:04d}.png")
            labels.append(i % n_classes)
            images.append(image)
        annotations: dict[str, Any] = {"images": files, "categories": labels}
        if classes is not None:
            annotations["classes"] = classes
        (root / "annotations" / f"{name}_{split}.json").write_text(json.dumps(annotations))
        written[split] = (images, labels)
    return written


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    n_per_class: int = 2,
    channels: int = 3,
    size: int = 8,
) -> dict[str, Split]:
    """Write `root/{train,test}/<class>/NN.png`, `n_per_class` size x size images per class. Returns each split's
    images and labels in ImageFolder's order: classes sorted, then files sorted."""
    written = {}
    for offset, split in enumerate(("train", "test")):
        images, labels = [], []
        for label, name in enumerate(sorted(classes)):
            (root / split / name).mkdir(parents=True)
            for i in range(n_per_class):
                image = image_pixels(1000 * offset + 10 * label + i, channels, size)
                write_png(image, str(root / split / name / f"{i:02d}.png"))
                images.append(image)
                labels.append(label)
        written[split] = (images, labels)
    return written
