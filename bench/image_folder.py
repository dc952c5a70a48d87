"""The image-file path: the CNN on a JSON-annotated image folder, the template in memory and item by item against a
raw loop with a plain DataLoader over the same files.

    python bench/make_image_folder.py /tmp/images                # 50,000 + 10,000 JPEG files, from MNIST
    python bench/image_folder.py /tmp/images [--repeats 3] [--epochs 1] [--steps N]

Each implementation is a fresh process, timed from its launch, in turn and repeated:
- `template in memory`: `python main.py --config configs/json_images.yaml --data.in_memory cpu` (the files decoded
  once into tensors before training; augmentation per batch);
- `template item by item`: the same with `--data.in_memory off` (decoded in loader workers at every epoch);
- `raw`: a plain loop, the files decoded by a torch DataLoader with one worker per core, the same CNN, optimizer,
  batch size and augmentation.
It prints, per implementation (medians over the repeats): the time to the first training step, the images per
second through a training epoch, and for `raw` how long decoding alone takes (one pass of its loader without
training), which splits an epoch's time between decoding and training. `--steps N` ends each epoch (and the
template's validation and test) after N batches, for a folder whose whole epoch takes too long on this machine: the
images per second are then those of the first N steps, while the in-memory path still decodes every file first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.run import template_common, timed  # noqa: E402

BATCH_SIZE, LR, WEIGHT_DECAY = 128, 0.002, 0.05  # as configs/json_images.yaml


def template_command(folder: Path, in_memory: str, epochs: int, steps: int | None, out: Path) -> list[str]:
    limits = [f"--trainer.limit_{split}_batches={steps}" for split in ("train", "val", "test")] if steps else []
    return [
        sys.executable,
        "main.py",
        "--config",
        "configs/json_images.yaml",
        "--data.dataset_args.root",
        str(folder),
        "--data.in_memory",
        in_memory,
        "--trainer.max_epochs",
        str(epochs),
        *limits,
        *template_common(out, str(out / "report.json")),
    ]


def raw(folder: Path, epochs: int, steps: int | None, report: Path) -> None:
    """The plain loop: torch DataLoader workers decode the files, the CNN trains on what they give."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    from model.cnn import CNN

    class Files(Dataset):
        def __init__(self, split: str, transform: v2.Transform) -> None:
            annotation = json.loads((folder / "annotations" / f"cifar10_{split}.json").read_text())
            self.files = [folder / f"{split}_cifar10" / name for name in annotation["images"]]
            self.labels, self.transform = annotation["categories"], transform

        def __len__(self) -> int:
            return len(self.files)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            image = decode_image(str(self.files[index]), mode=ImageReadMode.RGB).float() / 255
            return self.transform(image), self.labels[index]

    torch.manual_seed(42)
    normalize = v2.Normalize([0.5] * 3, [0.25] * 3)
    augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), normalize])
    cores = len(os.sched_getaffinity(0))
    loader = DataLoader(
        Files("train", augment), batch_size=BATCH_SIZE, shuffle=True, num_workers=cores, persistent_workers=True
    )
    net = CNN(in_channels=3, num_classes=10, channels=[32, 64, 128], convs_per_block=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    data: dict = {"epoch_times": []}
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        start = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            data.setdefault("first_step", time.time())
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        data["epoch_times"].append(time.perf_counter() - start)
    data["items"] = min(len(loader.dataset), steps * BATCH_SIZE) if steps else len(loader.dataset)
    start = time.perf_counter()
    for _ in loader:  # decoding alone: one whole pass of the loader, after training so as not to delay its start
        pass
    data["decode_images_per_s"] = len(loader.dataset) / (time.perf_counter() - start)
    report.write_text(json.dumps(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="written by bench/make_image_folder.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, help="end each epoch after this many batches (default: the whole split)")
    parser.add_argument("--raw-report", type=Path, help=argparse.SUPPRESS)  # the raw loop's own process
    args = parser.parse_args()
    if args.raw_report:
        raw(args.folder, args.epochs, args.steps, args.raw_report)
        return
    if not (args.folder / "annotations" / "cifar10_train.json").is_file():
        sys.exit(f"no image folder at {args.folder}: write one with bench/make_image_folder.py")
    train_items = len(json.loads((args.folder / "annotations" / "cifar10_train.json").read_text())["images"])
    found: dict[str, dict[str, list[float]]] = {}
    for repeat in range(args.repeats):
        for name in ("template in memory", "template item by item", "raw"):
            with tempfile.TemporaryDirectory() as directory:
                out = Path(directory)
                if name == "raw":
                    command = [sys.executable, __file__, str(args.folder), "--epochs", str(args.epochs)]
                    command += ["--steps", str(args.steps)] if args.steps else []
                    command += ["--raw-report", str(out / "report.json")]
                else:
                    in_memory = "cpu" if name == "template in memory" else "off"
                    command = template_command(args.folder, in_memory, args.epochs, args.steps, out)
                wall, rss, _, start = timed(command)
                report = json.loads((out / "report.json").read_text())
            # The template trains on the split's 90 %; the raw loop on all of it.
            items = report.get("items", min(round(train_items * 0.9), (args.steps or train_items) * BATCH_SIZE))
            row = found.setdefault(name, {"first_step": [], "images_per_s": [], "wall": [], "rss": []})
            row["first_step"].append(report["first_step"] - start)
            row["images_per_s"].append(items / statistics.median(report["epoch_times"]))
            row["wall"].append(wall)
            row["rss"].append(rss)
            if "decode_images_per_s" in report:
                row.setdefault("decode_images_per_s", []).append(report["decode_images_per_s"])
            print(f"[{repeat + 1}/{args.repeats}] {name}: {report['epoch_times']} s per epoch", flush=True)
    steps = f", the first {args.steps} steps of each epoch" if args.steps else ""
    print(f"\n{train_items:,} training images in {args.folder}{steps}; medians of {args.repeats}:\n")
    print("| implementation | first step (s) | images/s, training epoch | decoding alone, images/s | wall (s) |")
    print("|---|---|---|---|---|")
    for name, row in found.items():
        decode = row.get("decode_images_per_s")
        print(
            f"| {name} | {statistics.median(row['first_step']):.1f} | {statistics.median(row['images_per_s']):.0f} | "
            f"{f'{statistics.median(decode):.0f}' if decode else '-'} | {statistics.median(row['wall']):.1f} |"
        )


if __name__ == "__main__":
    main()
