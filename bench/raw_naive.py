"""The textbook loop: a torchvision dataset with ToTensor, a standard DataLoader, the five steps of a training step.

python bench/raw_naive.py mlp --data-root ../shared/data --report out.json
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import MNIST_MEAN, MNIST_STD, Report, autocast, build, parse_args, split_indices, synchronize, workload_of
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


def evaluate(net: nn.Module, loader: DataLoader, args: argparse.Namespace) -> tuple[float, float]:
    net.eval()
    correct, loss, seen = 0, 0.0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(args.device), y.to(args.device)
            with autocast(args):
                out = net(x)
            loss += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
    net.train()
    return correct / seen, loss / seen


def main() -> None:
    args = parse_args(__doc__)
    workload = workload_of(args)
    report = Report(args.report, workload.name)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    train_data = datasets.MNIST(args.data_root, train=True, transform=transform)
    test_data = datasets.MNIST(args.data_root, train=False, transform=transform)
    train, val = split_indices(len(train_data), workload.val_fraction)
    bs = workload.batch_size
    train_loader = DataLoader(Subset(train_data, train), batch_size=bs, shuffle=True)
    val_loader = DataLoader(Subset(train_data, val), batch_size=bs)
    test_loader = DataLoader(test_data, batch_size=bs)
    net, optimizer, scheduler = build(workload, args)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(workload.epochs):
        synchronize(args.device)
        start = time.perf_counter()
        for x, y in train_loader:
            report.first_step()
            x, y = x.to(args.device), y.to(args.device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(args):
                y_pred = net(x)  # 1. forward
                loss = loss_fn(y_pred, y)  # 2. loss
            optimizer.zero_grad()  # 3. zero the gradients
            loss.backward()  # 4. backward
            optimizer.step()  # 5. step
        synchronize(args.device)
        report.data["epoch_times"].append(time.perf_counter() - start)
        report.data["val_acc"].append(evaluate(net, val_loader, args)[0])
        if scheduler is not None:
            scheduler.step()
    test_acc, test_loss = evaluate(net, test_loader, args)
    report.write(test_acc=test_acc, test_loss=test_loss)


if __name__ == "__main__":
    main()
