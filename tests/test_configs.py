"""Every config in configs/ runs, and classification works end to end, in subprocesses as a user runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_main, write_image_folder, write_json_images, write_mnist

from model.cnn import CNN
from model.model_interface import MInterface

pytestmark = pytest.mark.slow

# Per config: the data it needs, written into a tmp dir (None: none), and the arguments that point to it.
CONFIG_DATA: dict[str, tuple[Callable[[Path], object] | None, list[str]]] = {
    "linear": (None, []),
    "mlp": (None, []),
    "cnn": (write_mnist, ["--data.root", "{root}"]),
    # Fake CIFAR-10 files cannot pass torchvision's checksums, so resnet18 runs on a folder of 32x32 images.
    "resnet": (
        lambda root: write_image_folder(root, n_per_class=4, size=32),
        ["--data", "image_folder", "--data.root", "{root}"],
    ),
    "json_images": (lambda root: write_json_images(root, n_per_class=4, size=32), ["--data.root", "{root}"]),
}


def test_every_config_has_a_run_below() -> None:
    assert sorted(CONFIG_DATA) == sorted(path.stem for path in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", sorted(CONFIG_DATA))
def test_config_runs_one_batch(config: str, tmp_path: Path) -> None:
    write, args = CONFIG_DATA[config]
    if write:
        write(tmp_path / "data")
    args = [arg.format(root=tmp_path / "data") for arg in args]
    run = run_main("--model", config, *args, "--trainer.fast_dev_run", "true", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test/loss" in run.stdout


def test_mlp_default_classifies_the_embedded_data(tmp_path: Path) -> None:
    run = run_main("--model", "mlp", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = run.results
    assert results["test"]["test/acc"] > 0.95
    assert results["fit"]["val/acc_best"] >= results["validation"]["val/acc"] - 1e-6
    assert (run.run_dir / "confusion_matrix.png").stat().st_size > 10_000
    checkpoint = tmp_path / results["best_checkpoint"]
    model = MInterface.load_from_checkpoint(checkpoint)
    assert model.net(torch.randn(4, 20)).shape == (4, 10)
    # The checkpoint holds the sizes the data gave: testing it again gives the same accuracy.
    again = run_main("test", "--model", "mlp", "--ckpt_path", str(checkpoint), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.results["test"]["test/acc"] == pytest.approx(results["test"]["test/acc"])


def test_cnn_learns_images_and_draws_its_figures(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", n_train=300, n_test=60)
    run = run_main(
        "--model", "cnn", "--data.root", str(tmp_path / "data"), "--data.batch_size", "32",
        "--model.net_args.channels", "[8, 16]", "--model.lr", "0.01", "--trainer.max_epochs", "3",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.results["test"]["test/acc"] > 0.9  # three patterns, learnable in a few steps
    for figure in ("confusion_matrix.png", "test_images.png"):
        assert (run.run_dir / figure).stat().st_size > 10_000
    # model.pth loads into the plain network, built with the sizes the data gave it.
    net = CNN(in_channels=1, num_classes=10, channels=(8, 16), convs_per_block=2)
    net.load_state_dict(torch.load(run.run_dir / "model.pth", weights_only=True))
    assert "num_classes: 10" in (run.run_dir / "hparams.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.net_args.num_classes", "5"], "error: model.net_args.num_classes is 5 but the data (mnist) has 10"),
        (["--data.root", "nowhere"], "error: MNIST: data root {tmp}/nowhere does not exist: set --data.root"),
        (["--data.random_crop_padding", "-1"], "error: data.random_crop_padding must be >= 0"),
    ],
)
def test_classification_user_errors(tmp_path: Path, args: list[str], message: str) -> None:
    write_mnist(tmp_path / "data")
    run = run_main("--model", "cnn", "--data.root", str(tmp_path / "data"), *args, cwd=tmp_path)
    assert run.returncode == 2 and message.format(tmp=tmp_path) in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
