"""export.py: a checkpoint's network as a state_dict, TorchScript and ONNX that run without Lightning."""

from __future__ import annotations

import importlib.util
import pathlib
import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import run_main, write_mnist
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import export as export_module
from data.data_interface import DInterface
from export import DEFAULT_FORMATS, example_input, export, load_network
from model.cnn import CNN
from model.linear import LinearRegressionModel
from model.mlp import MLP
from model.model_interface import MInterface
from utils import ConfigError

PLAIN_CLASSES = {"linear": LinearRegressionModel, "mlp": MLP, "cnn": CNN}
# One input's shape for each checkpoint below, and the input_shape that export needs for it (none: the checkpoints
# record the shape of the data they were trained on).
INPUT_SHAPES = {"linear": ((1,), None), "mlp": ((20,), None), "cnn": ((1, 28, 28), None)}


def checkpoint(tmp: Path, model: MInterface, data: DInterface) -> tuple[Path, MInterface]:
    """`model` fitted one epoch on `data` and saved to `tmp/model.ckpt`; returns the file and the fitted model."""
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True)],
    )
    trainer.fit(model, data)
    path = tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, MInterface]]:
    """A real checkpoint of the straight line, of an MLP on flat features and of a CNN on MNIST images."""
    mnist = write_mnist(tmp_path_factory.mktemp("data"), n_train=60, n_test=12)
    classifier: dict[str, Any] = {"loss": "CrossEntropyLoss", "optimizer": "Adam", "lr": 3e-3}
    runs = {
        "linear": (MInterface(), DInterface()),
        "mlp": (MInterface(net="mlp", **classifier), DInterface(dataset="synthetic", batch_size=64)),
        "cnn": (
            MInterface(net="cnn", net_args={"channels": [4, 8]}, **classifier),
            DInterface(dataset="mnist", dataset_args={"root": str(mnist)}, batch_size=16),
        ),
    }
    return {name: checkpoint(tmp_path_factory.mktemp(name), *run) for name, run in runs.items()}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", list(PLAIN_CLASSES))
def test_exported_files_give_the_checkpoint_models_outputs_in_plain_pytorch(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path, name: str
) -> None:
    path, trained = checkpoints[name]
    shape, input_shape = INPUT_SHAPES[name]
    formats = ("state_dict", "torchscript")
    written = export(path, tmp_path / "out", formats, input_shape=input_shape)
    assert written == {"state_dict": tmp_path / "out/model.pth", "torchscript": tmp_path / "out/model.torchscript.pt"}
    x = torch.randn(5, *shape)  # another batch size than the example input's 1
    with torch.no_grad():
        expected = trained.net(x)

        hparams = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
        plain = PLAIN_CLASSES[name](**(hparams["net_args"] or {}))
        plain.load_state_dict(torch.load(written["state_dict"], weights_only=True))
        torch.testing.assert_close(plain.eval()(x), expected, atol=1e-6, rtol=0)

        scripted = torch.jit.load(str(written["torchscript"]))
        torch.testing.assert_close(scripted(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(PLAIN_CLASSES))
def test_onnx_gives_the_checkpoint_models_outputs_in_onnxruntime(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path, name: str
) -> None:
    # Not skipped without its packages, which requirements-dev.txt installs: a missing one fails here.
    assert not export_module.onnx_missing(), "pip install -r requirements-dev.txt"
    import onnxruntime

    path, trained = checkpoints[name]
    shape, input_shape = INPUT_SHAPES[name]
    written = export(path, tmp_path, input_shape=input_shape)
    assert set(written) == set(DEFAULT_FORMATS)
    x = torch.randn(5, *shape)
    with torch.no_grad():
        expected = trained.net(x)
    session = onnxruntime.InferenceSession(str(written["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = session.run(["output"], {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-5, rtol=0)


def test_load_network_gives_the_model_in_eval_mode_and_an_example_batch_of_one(
    checkpoints: dict[str, tuple[Path, MInterface]],
) -> None:
    model, example = load_network(checkpoints["mlp"][0])
    assert not model.training and not model.net.training
    assert example.shape == (1, 20)
    assert load_network(checkpoints["linear"][0])[1].shape == (1, 1)
    assert load_network(checkpoints["cnn"][0])[1].shape == (1, 1, 28, 28)  # the shape the checkpoint recorded
    assert load_network(checkpoints["cnn"][0], input_shape=(1, 28, 28))[1].shape == (1, 1, 28, 28)


def test_example_input_reads_the_shape_from_the_networks_arguments() -> None:
    # For checkpoints from before the input's shape was recorded; no model is known by name.
    assert example_input({"net": "x", "net_args": {"in_channels": 3, "image_size": [8, 6]}}).shape == (1, 3, 8, 6)
    assert example_input({"net": "x", "net_args": {"in_channels": 3, "image_size": 8}}).shape == (1, 3, 8, 8)
    assert example_input({"net": "mlp", "net_args": {"input_size": 784}}).shape == (1, 784)
    assert example_input({"net": "linear", "net_args": None}) is None
    assert example_input({"net": "linear", "net_args": None}, input_shape=[1]).shape == (1, 1)
    assert example_input({"net": "cnn", "net_args": {"in_channels": 1}}) is None
    assert example_input({"net": "cnn", "net_args": {"in_channels": 1}}, input_shape=(1, 5, 7)).shape == (1, 1, 5, 7)
    with pytest.raises(ConfigError, match="input_shape must be"):
        example_input({"net": "cnn"}, input_shape=(1, 0, 28))


def test_every_checkpoint_records_the_shape_of_its_datas_inputs(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path
) -> None:
    for name, (shape, _) in INPUT_SHAPES.items():
        assert torch.load(checkpoints[name][0], weights_only=True)["example_input_shape"] == list(shape)
    # Data from plain loaders, without a data module to describe it, is recorded from the first batch.
    x = torch.linspace(0, 1, 16).unsqueeze(1)
    loader = DataLoader(TensorDataset(x, 0.7 * x + 0.3), batch_size=4)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(MInterface(), train_dataloaders=loader)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    assert torch.load(tmp_path / "plain.ckpt", weights_only=True)["example_input_shape"] == [1]
    assert load_network(tmp_path / "plain.ckpt")[1].shape == (1, 1)


@pytest.mark.parametrize("name", list(PLAIN_CLASSES))
def test_a_loaded_model_traces_with_lightnings_own_exporters_on_the_recorded_shape(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path, name: str
) -> None:
    import onnxruntime

    path, trained = checkpoints[name]
    shape, _ = INPUT_SHAPES[name]
    model = MInterface.load_from_checkpoint(path).eval()
    assert model.example_input_array.shape == (1, *shape)
    model.to_onnx(tmp_path / "model.onnx")  # no input sample: it traces the recorded shape
    x = torch.randn(1, *shape)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), trained.net(x), atol=1e-5, rtol=0)


def test_a_hostile_shape_recorded_in_a_checkpoint_is_refused_before_it_allocates(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path
) -> None:
    contents = torch.load(checkpoints["cnn"][0], weights_only=True)
    for shape in ([2**20, 2**20], [1, "28", 28], [1] * 9):
        contents["example_input_shape"] = shape
        torch.save(contents, tmp_path / "hostile.ckpt")
        with pytest.raises(ConfigError, match="input_shape"):
            load_network(tmp_path / "hostile.ckpt")
        with pytest.raises(ConfigError, match="input_shape"):
            MInterface.load_from_checkpoint(tmp_path / "hostile.ckpt")


def test_traced_formats_without_an_input_shape_are_an_error_that_says_why(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path
) -> None:
    # A checkpoint without the recorded input shape (written by a plain Trainer): the cnn takes any image size.
    contents = torch.load(checkpoints["cnn"][0], weights_only=True)
    del contents["example_input_shape"]
    shapeless = tmp_path / "shapeless.ckpt"
    torch.save(contents, shapeless)
    with pytest.raises(ConfigError, match="exporting torchscript traces the network on an example input.*input_shape"):
        export(shapeless, tmp_path / "out", ["state_dict", "torchscript"])
    assert not (tmp_path / "out").exists()  # nothing written
    assert set(export(shapeless, tmp_path / "out", ["state_dict"])) == {"state_dict"}
    # The straight line takes no size arguments: without the record, only the user can give its input's shape.
    contents = torch.load(checkpoints["linear"][0], weights_only=True)
    del contents["example_input_shape"]
    torch.save(contents, shapeless)
    with pytest.raises(ConfigError, match="checkpoint of 'linear' does not give its shape: pass input_shape"):
        export(shapeless, tmp_path / "out", ["torchscript"])
    assert set(export(shapeless, tmp_path / "out", ["torchscript"], input_shape=[1])) == {"torchscript"}


def test_onnx_without_its_packages_is_an_error_when_asked_for_and_skipped_by_default(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(export_module, "onnx_missing", lambda: ["onnx", "onnxscript"])
    with pytest.raises(ConfigError, match="ONNX export needs the onnx package: pip install onnx onnxscript"):
        export(checkpoints["mlp"][0], tmp_path, ["state_dict", "onnx"])
    assert set(export(checkpoints["mlp"][0], tmp_path)) == {"state_dict", "torchscript"}
    assert "Skipping ONNX export" in capsys.readouterr().out
    assert not (tmp_path / "model.onnx").exists()


def test_unknown_format_is_an_error_suggesting_the_closest(checkpoints, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown export format 'torchscirpt': did you mean torchscript?"):
        export(checkpoints["mlp"][0], tmp_path / "out", ["state_dict", "torchscirpt"])
    assert not (tmp_path / "out").exists()


class _Touch:
    """Unpickling this object creates `marker`: code in a pickle, as a crafted checkpoint would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path: Path) -> None:
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Touch(live)))  # the payload does run under plain unpickling
    assert live.exists()
    marker = tmp_path / "marker"
    forms = {
        "refused, it is not the zip archive that torch.save writes": pickle.dumps(_Touch(marker)),
        "refused, it does not load with weights-only": {"state_dict": {}, "hyper_parameters": _Touch(marker)},
    }
    for i, (message, data) in enumerate(forms.items()):
        crafted = tmp_path / f"crafted{i}.ckpt"
        crafted.write_bytes(data) if isinstance(data, bytes) else torch.save(data, crafted)
        with pytest.raises(ConfigError, match=message):
            load_network(crafted)
        with pytest.raises(ConfigError, match=message):
            export(crafted, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_missing_or_foreign_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--ckpt_path .*nothing\.ckpt: no such file"):
        load_network(tmp_path / "nothing.ckpt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        load_network(foreign)
    other_net = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {}, "state_dict": {"layer.weight": torch.zeros(2)}}, other_net)
    with pytest.raises(ConfigError, match="not a checkpoint of this template"):
        load_network(other_net)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_network(empty)


def test_command_line_exports_and_reports_user_errors_in_one_line(
    checkpoints: dict[str, tuple[Path, MInterface]], tmp_path: Path, capsys
) -> None:
    args = ["--ckpt_path", str(checkpoints["cnn"][0]), "--out_dir", str(tmp_path), "--formats", "state_dict"]
    assert export_module.main([*args, "torchscript", "--input_shape", "1", "28", "28"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"state_dict: {tmp_path / 'model.pth'}",
        f"torchscript: {tmp_path / 'model.torchscript.pt'}",
    ]
    assert export_module.main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--out_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --ckpt_path {tmp_path / 'none.ckpt'}: no such file"


def test_the_state_dict_keys_are_the_plain_networks(checkpoints: dict[str, tuple[Path, MInterface]], tmp_path) -> None:
    written = export(checkpoints["cnn"][0], tmp_path, ["state_dict"])
    state = torch.load(written["state_dict"], weights_only=True)
    assert state.keys() == checkpoints["cnn"][1].net.state_dict().keys()
    assert all(not key.startswith(("net.", "model.")) for key in state)
    CNN(in_channels=1, num_classes=10, channels=(4, 8)).load_state_dict(state)  # strict: every key matches


# A model file as a user adds one: a conv net whose sizes are fixed in its code, for 1 x 28 x 28 images in 10
# classes. Its constructor takes no size arguments, so nothing in its hyperparameters tells export its input's shape.
FIXED_SIZE_NET = """\"\"\"A conv net for 28 x 28 grayscale images in 10 classes, its sizes fixed in code.\"\"\"

import torch
from torch import nn


class FixedSizeNet(nn.Module):
    def __init__(self, width: int = 4) -> None:
        \"\"\"Args:
            width: Channels of the convolution.\"\"\"
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, stride=2)
        self.head = nn.Linear(width * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_a_newly_added_model_without_size_arguments_exports_in_every_format(project_copy: Path, tmp_path: Path) -> None:
    assert not export_module.onnx_missing(), "pip install -r requirements-dev.txt"
    import onnxruntime

    (project_copy / "model" / "fixed_size_net.py").write_text(FIXED_SIZE_NET)
    data = write_mnist(tmp_path / "data", n_train=60, n_test=12)
    fit = run_main(
        "--model", "fixed_size_net", "--data", "mnist", "--data.root", str(data), "--model.loss", "CrossEntropyLoss",
        "--model.optimizer", "Adam", "--model.lr", "0.003", "--trainer.max_epochs", "2", "--data.batch_size", "16",
        cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = fit.run_dir / "checkpoints" / "last.ckpt"
    contents = torch.load(ckpt, weights_only=True)
    assert contents["example_input_shape"] == [1, 28, 28]  # from the data: the net's arguments say nothing of it
    assert contents["hyper_parameters"]["net_args"] == {"width": 4}

    out = tmp_path / "exported"
    exported = run_main("export", "--ckpt_path", str(ckpt), "--out_dir", str(out), cwd=tmp_path, root=project_copy)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert exported.stdout.splitlines() == [f"{name}: {out / file}" for name, file in export_module.FORMATS.items()]

    # The network as the checkpoint holds it, built from the user's file: what every exported file must compute.
    spec = importlib.util.spec_from_file_location("fixed_size_net", project_copy / "model" / "fixed_size_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.FixedSizeNet(width=4).eval()
    net.load_state_dict({key[4:]: value for key, value in contents["state_dict"].items() if key.startswith("net.")})
    x = torch.randn(5, 1, 28, 28)  # another batch size than the traced example's 1
    with torch.no_grad():
        expected = net(x)
        plain = module.FixedSizeNet(width=4).eval()
        plain.load_state_dict(torch.load(out / "model.pth", weights_only=True))
        torch.testing.assert_close(plain(x), expected, atol=0, rtol=0)
        torch.testing.assert_close(torch.jit.load(str(out / "model.torchscript.pt"))(x), expected, atol=1e-6, rtol=0)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["output"], {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), expected, atol=1e-5, rtol=0)
