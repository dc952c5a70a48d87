"""The benchmark runs end to end (on a tiny MNIST, one repeat) and writes its report; it measures nothing here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, write_mnist


@pytest.mark.slow
def test_benchmark_runs_every_implementation_and_writes_the_report(tmp_path: Path) -> None:
    data = write_mnist(tmp_path / "data", n_train=200, n_test=40)
    out = tmp_path / "bench"
    command = [sys.executable, "bench/run.py", "--workloads", "line", "mlp", "--repeats", "1", "--out", str(out)]
    command += ["--epochs", "line=30", "mlp=2", "--data-root", str(data)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summaries = json.loads((out / "results.json").read_text())["summaries"]
    assert set(summaries["mlp"]) == {"raw-naive", "raw-tensor", "template", "template-grouped"}
    # 8 optimizer steps per Lightning step train the same weights: the same test accuracy.
    grouped, template = summaries["mlp"]["template-grouped"], summaries["mlp"]["template"]
    assert grouped["test_acc"]["median"] == template["test_acc"]["median"]
    assert set(summaries["line"]) == {"raw-naive", "template"}
    for summary in summaries["mlp"].values():
        assert summary["epoch"]["median"] > 0 and summary["wall"]["median"] > summary["startup"]["median"] > 0
        assert 0 <= summary["test_acc"]["median"] <= 1 and summary["peak_rss_mb"]["median"] > 100
    for summary in summaries["line"].values():
        assert 0 < summary["weight"]["median"] < 1.5 and "test_loss" in summary  # 30 epochs: on its way to 0.7

    report = (out / "RESULTS.md").read_text()
    assert "| mlp: template / raw-tensor, per-epoch |" in report and "## line: linear" in report
    assert "| mlp: template-grouped / raw-tensor, per-epoch |" in report
    assert "| mlp: template / raw-tensor, peak RSS |" in report
    assert "`main.py --help` / `import lightning.pytorch`" in report
    assert (out / "ratios.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_benchmark_skips_mnist_when_the_data_is_absent(tmp_path: Path) -> None:
    command = [sys.executable, "bench/run.py", "--workloads", "mlp", "--repeats", "1", "--out", str(tmp_path)]
    proc = subprocess.run(
        [*command, "--data-root", str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping the MNIST workloads: no MNIST/raw under {tmp_path / 'nowhere'}" in proc.stdout


def test_the_image_folder_script_writes_what_json_images_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST digits become 32 x 32 colour JPEG files with their labels, in the layout data/json_images.py reads."""
    from torchvision.datasets import MNIST

    from bench import make_image_folder
    from data.json_images import JsonImages

    data = write_mnist(tmp_path / "data", n_train=30, n_test=12)
    out = tmp_path / "images"
    monkeypatch.setattr(sys, "argv", ["make_image_folder.py", str(out), "--data-root", str(data), "--train", "20"])
    make_image_folder.main()
    train, test = JsonImages(str(out), train=True), JsonImages(str(out), train=False)
    assert (len(train), len(test)) == (20, 12) and train.classes == [str(d) for d in range(10)]
    assert train.labels == MNIST(str(data), train=True).targets[:20].tolist()
    image, _ = train[0]
    assert image.shape == (3, 32, 32) and not torch.equal(image[0], image[1])  # coloured, not grey


def test_the_image_folder_script_writes_nothing_without_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import make_image_folder

    monkeypatch.setattr(sys, "argv", ["make_image_folder.py", str(tmp_path / "images"), "--data-root", str(tmp_path)])
    make_image_folder.main()
    assert not (tmp_path / "images").exists()


def test_a_new_report_keeps_the_notes_written_by_hand(tmp_path: Path) -> None:
    from bench.run import NOTES_MARK, write_report

    (tmp_path / "RESULTS.md").write_text(f"old table\n\n{NOTES_MARK}\nA/B of a change: 0.95\n")
    measured = {"summaries": {}, "startup": {"help": [], "import": []}, "profile": "", "command": "python bench/run.py"}
    write_report({**measured, "repeats": 1, "seconds": 60, "machine": ["- CPU: test"]}, tmp_path)
    report = (tmp_path / "RESULTS.md").read_text()
    assert "old table" not in report and "- CPU: test" in report
    assert report.endswith(f"{NOTES_MARK}\nA/B of a change: 0.95\n")
