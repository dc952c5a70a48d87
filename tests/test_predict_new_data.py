"""Prediction on new data from a checkpoint alone: a folder of images, or a file of feature rows, prepared as the
training data was (data/_new_inputs.py), written to predictions.csv with the class names and the top-k classes."""

from __future__ import annotations

import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main
from PIL import Image
from test_code_from_elsewhere import TutorialImages, add_file, write_tutorial_images

from data._new_inputs import FeatureRows, NewImages, check_description, describe, new_inputs
from data.data_interface import DInterface
from model.model_interface import MInterface
from utils import ConfigError, DataError

GREY = describe(torch.zeros(1, 16, 16), ["0", "1", "2"], [0.5], [0.5])
ROWS = describe(torch.zeros(4), None)


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def last_error(run) -> str:
    lines = run.stderr.strip().splitlines()
    assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    return lines[-1]


# --- reading new inputs ------------------------------------------------------------------------------------------


def test_the_record_of_the_training_data_is_plain_and_checked() -> None:
    assert GREY == {
        "classes": ["0", "1", "2"],
        "input_shape": [1, 16, 16],
        "dtype": "float32",
        "image": {"channels": 1, "size": [16, 16], "mean": [0.5], "std": [0.5]},
    }
    assert check_description(GREY, "c") is GREY and check_description(ROWS, "c") is ROWS
    assert describe(torch.zeros(3, dtype=torch.long), None) is None  # token ids: not read from new files
    for bad in ({**GREY, "extra": 1}, {**GREY, "dtype": "object"}, {**GREY, "input_shape": [0]}, "text",
                {**GREY, "image": {**GREY["image"], "channels": 0}}, {**GREY, "classes": [1, 2]}):  # fmt: skip
        with pytest.raises(ConfigError, match="^c: the record of the training data .* is not what this template"):
            check_description(bad, "c")


def test_new_images_are_found_recursively_and_prepared_as_in_training(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    pixels = {"a.png": 0, "b/c.png": 255, "b/deeper/d.jpg": 51}
    for name, value in pixels.items():
        Image.new("RGB", (32, 24) if name == "a.png" else (16, 16), (value,) * 3).save(tmp_path / name)
    (tmp_path / ".hidden.txt").write_text("skipped")
    images = new_inputs(str(tmp_path), GREY)
    assert isinstance(images, NewImages) and images.files == ["a.png", "b/c.png", "b/deeper/d.jpg"]
    for index, value in enumerate(pixels.values()):
        image = images[index]
        assert image.shape == (1, 16, 16)  # grey as in training, resized to its size
        assert torch.allclose(image, torch.full_like(image, (value / 255 - 0.5) / 0.5), atol=0.02)


def test_new_colour_images_get_each_channels_normalisation(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (255, 0, 51)).save(tmp_path / "red.png")
    colour = describe(torch.zeros(3, 8, 8), ["a", "b"], [0.5, 0.0, 0.2], [0.5, 1.0, 0.1])
    image = new_inputs(str(tmp_path), colour)[0]
    expected = torch.tensor([(1 - 0.5) / 0.5, 0.0, (0.2 - 0.2) / 0.1])
    assert image.shape == (3, 8, 8) and torch.allclose(image[:, 0, 0], expected, atol=1e-5)


def test_unreadable_images_empty_folders_and_other_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match=f"^data.predict_path {empty}: no image files in it or its subfolders"):
        new_inputs(str(empty), GREY)
    (empty / "sub" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"^cannot decode image {empty / 'sub' / 'broken.png'} "):
        new_inputs(str(empty), GREY)[0]
    (empty / "notes.txt").write_text("a note")
    with pytest.raises(ConfigError, match=f"^data.predict_path: {empty / 'notes.txt'} is not an image file"):
        new_inputs(str(empty), GREY)
    with pytest.raises(ConfigError, match="is a folder of images, but the network was trained on inputs of shape"):
        new_inputs(str(empty), ROWS)
    with pytest.raises(ConfigError, match="no such file or folder"):
        new_inputs(str(tmp_path / "absent.csv"), ROWS)


def test_feature_rows_from_csv_npy_and_pt_are_the_same_rows(tmp_path: Path) -> None:
    rows = torch.tensor([[0.5, 1.0, -2.0, 3.25], [4.0, 5.5, 6.0, -7.0], [0.0, 0.0, 1e-3, 8.0]])
    (tmp_path / "rows.csv").write_text("a,b,c,d\n" + "\n".join(",".join(map(str, r)) for r in rows.tolist()) + "\n")
    np.save(tmp_path / "rows.npy", rows.double().numpy())
    torch.save(rows, tmp_path / "rows.pt")
    for name in ("rows.csv", "rows.npy", "rows.pt"):
        read = new_inputs(str(tmp_path / name), ROWS)
        assert isinstance(read, FeatureRows) and len(read) == 3 and read[1].dtype == torch.float32
        assert torch.equal(torch.stack([read[i] for i in range(3)]), rows)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("short.csv", "1,2,3,4\n1,2,3\n", "line 2 has 3 values, the first row 4"),
        ("words.csv", "1,2,3,4\n1,two,3,4\n", "line 2 holds 'two', not a number"),
        ("header.csv", "a,b,c,d\n", "holds no rows"),
        ("wide.csv", "1,2,3,4,5\n", r"its rows hold 5 values \(\[5\]\) but the network was trained on inputs of 4"),
        ("nan.csv", "1,2,3,4\n1,nan,3,4\n", "row 1 holds nan or inf"),
        ("column.npy", None, "holds 3 values in one axis: give one row of 4 values per item"),
        ("rows.txt", "1,2,3,4\n", "not a file of rows"),
    ],
)
def test_rows_that_cannot_be_used_are_one_error_naming_the_file(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    if content is None:
        np.save(tmp_path / name, np.zeros(3))
    else:
        (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=f"^data.predict_path {tmp_path / name}:? .*{message}"):
        new_inputs(str(tmp_path / name), ROWS)


class RunsCode:
    """What a hostile file holds: unpickling it calls `Path.touch` on the marker file (any call could be os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_rows_file_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"rows": RunsCode(marker)}, tmp_path / "hostile.pt")
    (tmp_path / "bare.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    np.save(tmp_path / "objects.npy", np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    for name in ("hostile.pt", "bare.pt"):
        with pytest.raises(DataError, match=f"^data.predict_path {tmp_path / name}: refused, it is not a tensor saved"):
            new_inputs(str(tmp_path / name), ROWS)
    with pytest.raises(DataError, match="objects.npy: cannot read it .*allow_pickle=False"):
        new_inputs(str(tmp_path / "objects.npy"), ROWS)
    assert not marker.exists()


def test_predict_path_is_for_predict_and_top_k_is_checked() -> None:
    with pytest.raises(ConfigError, match="^data.predict_path is for the predict subcommand: remove it"):
        DInterface(predict_path="new").setup("fit")
    with pytest.raises(ConfigError, match="^data.top_k must be >= 1, got 0"):
        DInterface(top_k=0)


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_folder_of_new_images_is_classified_from_the_checkpoint_alone(project_copy: Path, tmp_path: Path) -> None:
    add_file(project_copy, "data", "tutorial_images", TutorialImages)
    data = tmp_path / "data"
    _, test_labels = write_tutorial_images(data)
    fit = run_main(
        "--model", "cnn", "--data", "tutorial_images", "--data.root", str(data), "--data.batch_size=8",
        "--data.num_workers=0", cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = fit.run_dir / "checkpoints" / "last.ckpt"
    test_split = run_main("predict", "--ckpt_path", str(checkpoint), cwd=tmp_path, root=project_copy)
    assert test_split.returncode == 0, test_split.stderr[-3000:]
    by_index = {int(row["id"]): row for row in rows_of(tmp_path / test_split.results["predictions"])}

    new = tmp_path / "new images"
    names = {}  # the file's name inside the new folder -> its index in the test split
    for index in range(len(test_labels)):
        name = f"{['cats', 'dogs/big', 'dogs/small'][index % 3]}/photo {index}.png"
        (new / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "test" / f"{index:03d}.png", new / name)
        names[name] = index
    shutil.rmtree(data)  # the training data is gone: the checkpoint alone says how to prepare images
    predict = run_main(
        "predict", "--ckpt_path", str(checkpoint), "--data.predict_path", str(new), "--data.top_k", "3",
        cwd=tmp_path, root=project_copy,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert predict.results["predict_path"] == str(new) and predict.results["num_predictions"] == len(names)
    rows = rows_of(tmp_path / predict.results["predictions"])
    assert [row["id"] for row in rows] == sorted(names)
    ranked = [f"{column}{rank}" for rank in ("", "_2", "_3") for column in ("prediction", "class", "probability")]
    assert list(rows[0]) == ["id", *ranked]
    right = 0
    for row in rows:
        index = names[row["id"]]
        probabilities = [float(row[f"probability{r}"]) for r in ("", "_2", "_3")]
        assert abs(sum(probabilities) - 1) < 1e-4 and probabilities == sorted(probabilities, reverse=True)
        assert sorted(row[f"class{r}"] for r in ("", "_2", "_3")) == ["0", "1", "2"]  # the class names of training
        # The same image in the test split, prepared by the dataset's own pipeline: the same prediction.
        assert row["class"] == by_index[index]["class"]
        assert abs(float(row["probability"]) - float(by_index[index]["probability"])) < 1e-5
        right += row["class"] == str(test_labels[index])
    assert right >= 0.9 * len(rows)

    (new / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    broken = run_main("predict", "--ckpt_path", str(checkpoint), "--data.predict_path", str(new), cwd=tmp_path,
                      root=project_copy)  # fmt: skip
    assert broken.returncode == 2
    assert last_error(broken).startswith(f"error: cannot decode image {new / 'cats' / 'broken.png'} (")
    (tmp_path / "empty").mkdir()
    empty = run_main("predict", "--ckpt_path", str(checkpoint), "--data.predict_path", str(tmp_path / "empty"),
                     cwd=tmp_path, root=project_copy)  # fmt: skip
    assert empty.returncode == 2
    assert last_error(empty).startswith(f"error: data.predict_path {tmp_path / 'empty'}: no image files in it")


@pytest.mark.slow
def test_feature_rows_are_predicted_by_a_regression_net_and_a_classifier(tmp_path: Path) -> None:
    fit = run_main("--model", "linear", "--trainer.max_epochs=20", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = fit.run_dir / "checkpoints" / "last.ckpt"
    (tmp_path / "x.csv").write_text("x\n0.0\n0.5\n1.0\n")
    predict = run_main("predict", "--ckpt_path", str(checkpoint), "--data.predict_path", "x.csv", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    weight, bias = float(weights["net.weight"]), float(weights["net.bias"])
    rows = rows_of(tmp_path / predict.results["predictions"])
    assert [row["id"] for row in rows] == ["0", "1", "2"] and list(rows[0]) == ["id", "prediction"]
    for row, x in zip(rows, (0.0, 0.5, 1.0), strict=True):
        assert abs(float(row["prediction"]) - (weight * x + bias)) < 1e-5

    fit = run_main("--model", "mlp", "--data", "synthetic", "--trainer.max_epochs=1", "--data.num_workers=0",
                   cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = fit.run_dir / "checkpoints" / "last.ckpt"
    features = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "rows.npy", features.numpy())
    predict = run_main("predict", "--ckpt_path", str(checkpoint), "--data.predict_path", "rows.npy", "--data.top_k=2",
                       cwd=tmp_path)  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    model = MInterface.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        expected = model(features).softmax(dim=1).topk(2, dim=1)
    classes = torch.load(checkpoint, weights_only=True)["DInterface"]["trained_on"]["classes"]
    for row, p, label in zip(rows_of(tmp_path / predict.results["predictions"]), *expected, strict=True):
        assert [int(row["prediction"]), int(row["prediction_2"])] == label.tolist()
        assert row["class_2"] == classes[label[1]]
        assert abs(float(row["probability"]) - float(p[0])) < 1e-5
    regression = run_main("predict", "--ckpt_path", str(fit.run_dir / "checkpoints" / "last.ckpt"),
                          "--data.predict_path", "rows.npy", "--data.top_k=11", cwd=tmp_path)  # fmt: skip
    assert regression.returncode == 2
    assert last_error(regression) == "error: data.top_k 11 is more than the 10 classes: use 10 or less"
