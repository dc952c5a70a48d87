"""What the raw loops share: the command line, the MNIST split the template uses, evaluation and the report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the model files, for the very same networks

from bench.workloads import MNIST_MEAN, MNIST_STD, SEED, SPLIT_SEED, WORKLOADS, Workload  # noqa: E402, F401


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("workload", choices=["mlp", "cnn"])
    parser.add_argument("--data-root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--report", required=True, help="JSON file to write the measurements to")
    return parser.parse_args()


def build(workload: Workload, args: argparse.Namespace) -> tuple[nn.Module, Any, Any]:
    """The workload's network (from model/<net>.py), Adam and the optional cosine schedule."""
    from model.cnn import CNN
    from model.mlp import MLP

    torch.manual_seed(SEED)
    net = {"mlp": MLP, "cnn": CNN}[workload.net](**workload.net_args).to(args.device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=workload.lr)
    scheduler = None
    if workload.cosine_t_max:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=workload.cosine_t_max)
    if args.compile:
        net.compile()
    return net, optimizer, scheduler


def split_indices(size: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """The train/val indices DInterface draws (random_split with split_seed), so all train on the same items."""
    train, val = torch.utils.data.random_split(
        range(size), [1 - val_fraction, val_fraction], generator=torch.Generator().manual_seed(SPLIT_SEED)
    )
    return list(train.indices), list(val.indices)


def autocast(args: argparse.Namespace) -> Any:
    return torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=args.precision == "bf16-mixed")


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Report:
    """The measurements a run writes for bench/run.py: epoch times, first-step time, accuracy, GPU peak."""

    def __init__(self, path: str, workload: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"workload": workload, "epoch_times": [], "val_acc": []}

    def first_step(self) -> None:
        self.data.setdefault("first_step", time.time())

    def write(self, **values: Any) -> None:
        self.data.update(values)
        if torch.cuda.is_available():
            self.data["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        Path(self.path).write_text(json.dumps(self.data))


def workload_of(args: argparse.Namespace) -> Workload:
    workload = WORKLOADS[args.workload]
    if args.epochs:
        workload = replace(workload, epochs=args.epochs)
    return workload
