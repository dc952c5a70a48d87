"""A careful hand-written loop: MNIST preloaded as one tensor on the device, batches taken by index slicing.

python bench/raw_tensor.py mlp --data-root ../shared/data --report out.json
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from _common import MNIST_MEAN, MNIST_STD, Report, autocast, build, parse_args, split_indices, synchronize, workload_of
from torch import nn


def load(root: str, train: bool, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = torchvision.datasets.MNIST(root, train=train)
    x = (dataset.data.unsqueeze(1).float().div_(255) - MNIST_MEAN) / MNIST_STD
    return x.to(device), dataset.targets.to(device)


@torch.no_grad()
def accuracy(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, args: argparse.Namespace
) -> tuple[float, float]:
    net.eval()
    correct, loss = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), batch_size):
        with autocast(args):
            out = net(x[i : i + batch_size])
        loss += nn.functional.cross_entropy(out.float(), y[i : i + batch_size], reduction="sum")
        correct += (out.argmax(1) == y[i : i + batch_size]).sum()
    net.train()
    return correct.item() / len(x), loss.item() / len(x)


def main() -> None:
    args = parse_args(__doc__)
    workload = workload_of(args)
    report = Report(args.report, workload.name)
    x, y = load(args.data_root, True, args.device)
    train, val = split_indices(len(x), workload.val_fraction)
    train, val = torch.tensor(train, device=args.device), torch.tensor(val, device=args.device)
    x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
    if args.channels_last:
        x_train, x_val = (t.contiguous(memory_format=torch.channels_last) for t in (x_train, x_val))
    x_test, y_test = load(args.data_root, False, args.device)
    net, optimizer, scheduler = build(workload, args)
    loss_fn = nn.CrossEntropyLoss()
    bs = workload.batch_size
    for _ in range(workload.epochs):
        synchronize(args.device)
        start = time.perf_counter()
        order = torch.randperm(len(x_train), device=args.device)
        for i in range(0, len(order), bs):
            report.first_step()
            batch = order[i : i + bs]
            with autocast(args):
                loss = loss_fn(net(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        synchronize(args.device)
        report.data["epoch_times"].append(time.perf_counter() - start)
        report.data["val_acc"].append(accuracy(net, x_val, y_val, bs, args)[0])
        if scheduler is not None:
            scheduler.step()
    test_acc, test_loss = accuracy(net, x_test, y_test, bs, args)
    report.write(test_acc=test_acc, test_loss=test_loss)


if __name__ == "__main__":
    main()
