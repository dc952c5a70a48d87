"""Writes a JSON-annotated image folder (the CIFAR-10 layout that data/json_images.py reads) from MNIST digits, so
that the image-file benchmark needs no download: each digit upsampled to 32x32 and coloured (a random ink and paper
colour per image), saved as a JPEG file.

    python bench/make_image_folder.py OUT [--data-root ../shared/data] [--train 50000] [--test 10000]

OUT gets annotations/cifar10_train.json and cifar10_test.json ({"images", "categories", "classes"}) and the folders
train_cifar10/ and test_cifar10/. The defaults give CIFAR-10's size: 50,000 training and 10,000 test images. The
digits come from MNIST/raw under --data-root; without them the script says so and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
CLASSES = [str(digit) for digit in range(10)]


def coloured(digits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 N x 3 x 32 x 32 images: the N x 28 x 28 grey `digits` upsampled, ink and paper in random colours."""
    from torch.nn.functional import interpolate

    grey = interpolate(digits.unsqueeze(1).float() / 255, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    ink = torch.rand(len(digits), 3, 1, 1, generator=generator)
    paper = torch.rand(len(digits), 3, 1, 1, generator=generator)
    return ((grey * ink + (1 - grey) * paper) * 255).round().clamp(0, 255).to(torch.uint8)


def write_split(out: Path, split: str, images: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """The split's JPEG files in OUT/<split>_<name>/ and their list in OUT/annotations/<name>_<split>.json."""
    from torchvision.io import encode_jpeg, write_file

    folder = out / f"{split}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for start in range(0, len(images), 1000):
        chunk = list(images[start : start + 1000])
        for offset, encoded in enumerate(encode_jpeg(chunk, quality=90)):
            file = f"{start + offset:05d}.jpg"
            write_file(str(folder / file), encoded)
            files.append(file)
    annotation = {"images": files, "categories": labels.tolist(), "classes": CLASSES}
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"{name}_{split}.json").write_text(json.dumps(annotation))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="folder holding MNIST/raw/")
    parser.add_argument("--train", type=int, default=50_000, help="training images (at most 60,000)")
    parser.add_argument("--test", type=int, default=10_000, help="test images (at most 10,000)")
    parser.add_argument("--name", default="cifar10", help="the dataset name in the file and folder names")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (Path(args.data_root) / "MNIST" / "raw").is_dir():
        print(f"no MNIST/raw under {Path(args.data_root).resolve()} (--data-root): nothing written")
        return
    if not 0 < args.train <= 60_000 or not 0 < args.test <= 10_000:
        sys.exit("--train must be in 1..60000 and --test in 1..10000")
    from torchvision.datasets import MNIST

    generator = torch.Generator().manual_seed(args.seed)
    for split, count in (("train", args.train), ("test", args.test)):
        mnist = MNIST(args.data_root, train=split == "train")
        images = coloured(mnist.data[:count], generator)
        write_split(args.out, split, images, mnist.targets[:count], args.name)
        print(f"{split}: {count:,} images in {args.out / f'{split}_{args.name}'}")


if __name__ == "__main__":
    main()
