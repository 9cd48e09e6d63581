"""A folder of images or signal files with one subfolder per class, packed into the dataset file a search reads."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.cli import main
from search.data import load_dataset


def _image(rng, size=(12, 10), grey=False) -> Image.Image:
    """A random image of ``size`` (width, height): its exact pixels are what a packed file must hold."""
    width, height = size
    shape = (height, width) if grey else (height, width, 3)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8))


def _folder(root: Path, classes=("cat", "dog", "owl"), per_class=8, **image) -> dict[Path, Image.Image]:
    rng = np.random.default_rng(0)
    saved = {}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            path = root / name / f"{i}.{'png' if i % 2 else 'bmp'}"  # lossless: the pixels read back exactly
            saved[path] = _image(rng, **image)
            saved[path].save(path)
    return saved


def _pack(capsys, *args) -> tuple[int, str, str]:
    code = main(["pack", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_folder_of_class_folders_packs_into_the_images_a_search_reads(tmp_path, capsys):
    saved = _folder(tmp_path / "pets")
    (tmp_path / "pets" / "notes.txt").write_text("taken in May")  # beside the class folders: no class
    (tmp_path / "pets" / "cat" / "labels.csv").write_text("x")
    (tmp_path / "pets" / "dog" / ".DS_Store").write_bytes(b"\0")  # a dot file is not data, nor said
    (tmp_path / "pets" / "owl" / "._3.png").write_bytes(b"\0\5\26\7")  # macOS' metadata twin of 3.png
    code, out, err = _pack(capsys, tmp_path / "pets", "--out", tmp_path / "pets.npz")
    assert code == 0, err
    assert f"packed 24 images of 3 classes into {tmp_path / 'pets.npz'} (" in out
    assert "12x10 pixels, RGB (3 channels, stored height x width x channel), 8-bit values 0-255" in out
    assert "not read: 2 file(s), not data or not in a class folder (cat/labels.csv, notes.txt)" in out
    assert "DS_Store" not in out and "._3" not in out
    with np.load(tmp_path / "pets.npz") as archive:
        assert list(archive["class_names"]) == ["cat", "dog", "owl"] and str(archive["layout"]) == "NHWC"
        x, y = archive["x"], archive["y"]
    order = sorted(saved, key=lambda p: (p.parent.name, p.name))
    assert x.dtype == np.uint8 and x.shape == (24, 10, 12, 3)
    for i, path in enumerate(order):
        assert np.array_equal(x[i], np.asarray(saved[path])) and y[i] == path.parent.name
    # as a search reads it: channel first, each class named, the splits drawn
    data = load_dataset(str(tmp_path / "pets.npz"))
    assert data.sample_shape == (3, 10, 12) and data.class_names == ("cat", "dog", "owl")
    assert data.saved_layout == "NHWC" and len(data.x_train) + len(data.x_val) + len(data.x_test) == 24
    assert data.from_images and data.input_values().startswith(
        "8-bit pixel values (0 to 255) as decoded from the image files by edgesearch pack, unscaled; the training data "
        "spans 0 to 255")
    assert f"dataset {data.summary()}" in out
    first = data.x_test[0].transpose(1, 2, 0)
    assert any(np.array_equal(first, np.asarray(image)) for image in saved.values())


def test_the_same_folder_packed_again_is_the_same_file(tmp_path, capsys):
    """Unchanged files packed again keep the dataset's fingerprint, which keys its teacher and screenings (numpy
    stamps no time on an archive's members, and pack reads the files in a sorted order)."""
    _folder(tmp_path / "pets")
    first, again = tmp_path / "first.npz", tmp_path / "again.npz"
    assert _pack(capsys, tmp_path / "pets", "--out", first)[0] == 0
    time.sleep(2.1)  # past the 2 s steps of a zip member's time
    assert _pack(capsys, tmp_path / "pets", "--out", again)[0] == 0
    assert first.read_bytes() == again.read_bytes()
    assert load_dataset(str(first)).fingerprint == load_dataset(str(again)).fingerprint


def test_grey_images_pack_as_one_channel_and_colour_ones_as_grey_when_asked(tmp_path, capsys):
    _folder(tmp_path / "grey", grey=True)
    assert _pack(capsys, tmp_path / "grey", "--out", tmp_path / "grey.npz")[0] == 0
    data = load_dataset(str(tmp_path / "grey.npz"))
    assert data.sample_shape == (1, 10, 12) and data.saved_layout == ""
    saved = _folder(tmp_path / "colour")
    code, out, _ = _pack(capsys, tmp_path / "colour", "--out", tmp_path / "colour.npz", "--grey")
    assert code == 0 and "grey (1 channel)" in out
    with np.load(tmp_path / "colour.npz") as archive:
        first = sorted(saved, key=lambda p: (p.parent.name, p.name))[0]
        assert np.array_equal(archive["x"][0], np.asarray(saved[first].convert("L")))


def test_a_folder_of_train_test_and_val_keeps_its_splits(tmp_path, capsys):
    for split, count in (("train", 6), ("test", 3), ("validation", 2)):
        _folder(tmp_path / "set" / split, per_class=count)
    code, out, err = _pack(capsys, tmp_path / "set", "--out", tmp_path / "set.npz")
    assert code == 0, err
    assert "the folder's own splits (train, test, val)" in out
    data = load_dataset(str(tmp_path / "set.npz"))
    assert (len(data.x_train), len(data.x_test), len(data.x_val)) == (18, 9, 6) and data.drawn == ""
    assert list(np.bincount(data.y_test)) == [3, 3, 3]


def test_images_of_several_sizes_are_refused_until_a_size_is_given(tmp_path, capsys):
    saved = _folder(tmp_path / "pets")
    rng = np.random.default_rng(1)
    for i, size in enumerate([(40, 30), (40, 30), (7, 9)]):
        _image(rng, size).save(tmp_path / "pets" / "dog" / f"big{i}.png")
    code, _, err = _pack(capsys, tmp_path / "pets", "--out", tmp_path / "pets.npz")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("images of 3 sizes: 24 of 12x10 (such as cat/0.bmp), 2 of 40x30 (such as dog/big0.png), 1 of 7x9 "
            "(such as dog/big2.png). A model takes one input size: pass --size WxH") in err
    assert not (tmp_path / "pets.npz").exists()
    code, out, err = _pack(capsys, tmp_path / "pets", "--out", tmp_path / "pets.npz", "--size", "16x8")
    assert code == 0, err
    assert "resized to 16x8 (bilinear): 27 image(s) of another size" in out
    with np.load(tmp_path / "pets.npz") as archive:
        assert archive["x"].shape == (27, 8, 16, 3)
        first = sorted(saved, key=lambda p: (p.parent.name, p.name))[0]
        assert np.array_equal(archive["x"][0], np.asarray(saved[first].resize((16, 8), Image.Resampling.BILINEAR)))


def test_a_photo_is_packed_upright_as_its_exif_orientation_says(tmp_path, capsys):
    _folder(tmp_path / "pets", size=(10, 12))  # portrait: 10 wide, 12 high
    rng = np.random.default_rng(2)
    photo = _image(rng, (12, 10))  # stored landscape by the camera, with "rotate 90 clockwise to show"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(tmp_path / "pets" / "owl" / "phone.jpg", exif=exif, quality=100)
    code, _, err = _pack(capsys, tmp_path / "pets", "--out", tmp_path / "pets.npz")
    assert code == 0, err  # one size: the photo, turned upright, is 10x12 like the others
    with np.load(tmp_path / "pets.npz") as archive:
        assert archive["x"].shape[1:] == (12, 10, 3)


@pytest.mark.parametrize("case, said", [
    ("corrupt", "dog/5.png in {root} is not a readable image ("),
    ("16-bit", "cat/deep.png in {root} has I;16 pixels (16-bit or floating point); pack reads 8-bit images"),
    ("no classes", "{root} holds no class folders: put each class's images in a subfolder named after the class"),
    ("one class", "{root}: one class folder ('cat'); a classifier needs at least 2."),
    ("empty class", "{root}: class folder(s) 'eel' hold no image file (.bmp, .gif, "),
    ("test class not trained", "{root}: test/ has class folder(s) 'eel' that train/ has not (cat, dog, owl)"),
    ("train without test", "{root} has a train/ folder, so it is read as splits, each with one subfolder per class; "
                           "it needs test/ beside it."),
    ("too few to split", "{root} packed: cannot draw the test split (20% of 'x', stratified by class): "),
    ("too few to split", "members are: [0, 1, 2] Add images of every class. Or give the folder splits of its own: "
                         "train/ and test/ (and val/), each with the class folders."),
    ("out not npz", "--out must name a .npz file (the dataset a search reads); got "),
    ("bad size", "--size must be WIDTHxHEIGHT in pixels, such as 32x32"),
])
def test_a_folder_that_makes_no_dataset_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys, case, said):
    root, out = tmp_path / "pets", tmp_path / "pets.npz"
    args = []
    if case == "corrupt":
        _folder(root)
        (root / "dog" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest")
    elif case == "16-bit":
        _folder(root)
        Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16)).save(root / "cat" / "deep.png")
    elif case == "no classes":
        root.mkdir()
        _image(np.random.default_rng(0)).save(root / "0.png")
    elif case == "one class":
        _folder(root, classes=("cat",))
    elif case == "empty class":
        _folder(root)
        (root / "eel").mkdir()
        (root / "eel" / "notes.txt").write_text("none yet")
    elif case == "test class not trained":
        _folder(root / "train")
        _folder(root / "test", classes=("cat", "eel"), per_class=2)
    elif case == "train without test":
        _folder(root / "train")
    elif case == "too few to split":
        _folder(root, per_class=1)
    elif case == "out not npz":
        _folder(root)
        out = tmp_path / "pets.zip"
    else:
        _folder(root)
        args = ["--size", "32 by 32"]
    code, _, err = _pack(capsys, root, "--out", out, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert said.format(root=root) in err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_a_folder_given_as_the_dataset_is_told_how_to_pack_it(tmp_path, capsys):
    _folder(tmp_path / "pets")
    runs = tmp_path / "runs"
    for command in (["evaluate", "--epochs", "1"], ["submit", "--name", "pets", "--trials", "1", "--no-mlflow"]):
        assert main(["--runs-dir", str(runs), *command, "--dataset", str(tmp_path / "pets")]) == 2
        err = capsys.readouterr().err
        assert (f"Dataset '{tmp_path / 'pets'}' is a folder; a search reads one .npz file. For a folder of images or "
                f"signal files with one subfolder per class, pack it first: edgesearch pack {tmp_path / 'pets'} "
                "--out pets.npz") in err
    assert not (runs / "searches").exists()


def _predict(folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict.py", *map(str, args), "--runtime", "onnxruntime"], cwd=folder,
                          capture_output=True, text=True, timeout=300)


def _exported(capsys, folder: Path, out: Path) -> dict:
    """``folder`` packed, and an untrained model of its data exported to ``out`` with predict.py and a card, as
    ``edgesearch export`` writes them: what predict.py reads is the point, not what the model learned."""
    from search.candidate import Candidate
    from search.export import model_input, predict_py
    from search.models import build_model
    from search.stages.export import export_onnx
    from tests.search.conftest import TINY

    assert _pack(capsys, folder, "--out", folder.with_suffix(".npz"))[0] == 0
    data = load_dataset(str(folder.with_suffix(".npz")))
    torch.manual_seed(0)  # an untrained model's outputs differ little between inputs: one set of weights, always
    export_onnx(build_model(data.sample_shape, data.num_classes, 0.5).eval(),
                Candidate(precision="fp32", width=0.5, budget=TINY), data, out / "model.onnx")
    card = {"runtime": "onnxruntime", "input": model_input(data, "float32"), "class_names": list(data.class_names)}
    (out / "model_card.json").write_text(json.dumps(card))
    (out / "predict.py").write_text(predict_py())
    return card


def test_the_predict_py_of_a_model_of_packed_images_reads_an_image_as_pack_read_them(tmp_path, capsys):
    """A user of a folder of photos classifies a photo, not an array: predict.py decodes, converts and resizes it as
    the training images were packed, so it runs the model on the values it was trained on."""
    saved, out = _folder(tmp_path / "pets"), tmp_path / "export"
    card = _exported(capsys, tmp_path / "pets", out)
    first, other = sorted(saved)[:2]
    np.save(tmp_path / "first.npy", np.asarray(saved[first]).transpose(2, 0, 1))  # as the search read it
    by_image, by_array, another = (_predict(out, p) for p in (first, tmp_path / "first.npy", other))
    assert by_image.returncode == 0, by_image.stderr
    assert by_image.stdout == by_array.stdout != another.stdout and "logits" in by_image.stdout
    # a photo of another size, with an alpha channel: converted and resized as pack --size would
    rng = np.random.default_rng(5)
    photo = Image.fromarray(rng.integers(0, 256, size=(30, 40, 4), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    np.save(tmp_path / "photo.npy", np.asarray(photo.convert("RGB").resize((12, 10), Image.Resampling.BILINEAR))
            .transpose(2, 0, 1))
    assert _predict(out, tmp_path / "photo.png").stdout == _predict(out, tmp_path / "photo.npy").stdout
    assert "; or an image file" in _predict(out, "--help").stdout
    (tmp_path / "window.csv").write_text("1,2,3\n4,5,6\n")
    refused = _predict(out, tmp_path / "window.csv")
    assert refused.returncode == 2 and (f"{tmp_path / 'window.csv'} is a CSV file, and this model takes images of "
                                        "shape (3, 10, 12): pass a .npy") in refused.stderr
    # a model trained on values of another kind: an image's pixels are not its input, and it says what is
    card["input"].pop("image_files")
    (out / "model_card.json").write_text(json.dumps(card))
    refused = _predict(out, first)
    assert refused.returncode == 2
    assert (f"{first} is an image file, and this model was not trained on images packed from files: pass a .npy of "
            "its input (") in refused.stderr


def _windows(root: Path, length=32, per_class=8, header="timestamp,ax,ay,az", sep=",") -> dict[Path, np.ndarray]:
    """Accelerometer-like windows, one CSV per window, with a time column as loggers write it."""
    rng = np.random.default_rng(3)
    saved = {}
    for k, name in enumerate(("walk", "run", "sit")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            window = (rng.normal(size=(length, 3)) * (k + 1)).round(4)
            times = np.arange(length)[:, None] * 20.0
            lines = ([header] if header else []) + [sep.join(f"{v:g}" for v in row)
                                                    for row in np.hstack([times, window])]
            path = root / name / f"{i}.csv"
            path.write_text("\n".join(lines) + "\n")
            saved[path] = window
    return saved


def test_a_folder_of_csv_windows_packs_into_signals_without_their_time_column(tmp_path, capsys):
    saved = _windows(tmp_path / "har")
    np.save(tmp_path / "har" / "sit" / "extra.npy", np.ones((32, 3)))  # a window saved with numpy, beside CSVs
    code, out, err = _pack(capsys, tmp_path / "har", "--out", tmp_path / "har.npz")
    assert code == 0, err
    assert ("packed 25 signal windows of 3 classes into " in out and "windows of 32 samples x 3 channel(s) (ax, ay, "
            "az), values as read (float32; a device feeds the model the same); column(s) timestamp left out: a time, "
            "not a signal") in out
    with np.load(tmp_path / "har.npz") as archive:
        assert str(archive["layout"]) == "NLC" and list(archive["class_names"]) == ["run", "sit", "walk"]
        x, y = archive["x"], archive["y"]
    order = sorted([*saved, tmp_path / "har" / "sit" / "extra.npy"], key=lambda p: (p.parent.name, p.name))
    for i, path in enumerate(order):
        expected = saved[path] if path in saved else np.ones((32, 3))
        assert np.array_equal(x[i], expected.astype(np.float32)) and y[i] == path.parent.name
    data = load_dataset(str(tmp_path / "har.npz"))
    assert data.sample_shape == (3, 32) and data.saved_layout == "NLC" and not data.from_images
    assert data.reads_as() == "1-D signals, 3 channel(s) of 32 samples"


@pytest.mark.parametrize("sep, header", [(";", "ax;ay;az"), ("\t", ""), (" ", "")])
def test_csv_windows_separated_otherwise_or_without_names_read_alike(tmp_path, capsys, sep, header):
    saved = _windows(tmp_path / "har", header=header, sep=sep)
    if header:  # no time column here: every column a channel
        for path, window in saved.items():
            path.write_text("\n".join([header, *(sep.join(f"{v:g}" for v in row) for row in window)]) + "\n")
    code, out, err = _pack(capsys, tmp_path / "har", "--out", tmp_path / "har.npz")
    assert code == 0, err
    with np.load(tmp_path / "har.npz") as archive:
        first = sorted(saved, key=lambda p: (p.parent.name, p.name))[0]
        channels = saved[first] if header else np.hstack([np.arange(32)[:, None] * 20.0, saved[first]])
        assert np.array_equal(archive["x"][0], channels.astype(np.float32))


def test_one_column_and_one_row_windows_are_one_channel_signals(tmp_path, capsys):
    rng = np.random.default_rng(4)
    for name in ("tone", "noise"):
        (tmp_path / "mic" / name).mkdir(parents=True)
        for i in range(8):  # half as a column, half as one row, as a spreadsheet may save a window
            np.savetxt(tmp_path / "mic" / name / f"{i}.csv", rng.normal(size=(1, 64) if i % 2 else 64),
                       delimiter=",")
    assert _pack(capsys, tmp_path / "mic", "--out", tmp_path / "mic.npz")[0] == 0
    data = load_dataset(str(tmp_path / "mic.npz"))
    assert data.sample_shape == (1, 64) and data.saved_layout == ""


@pytest.mark.parametrize("case, said", [
    ("lengths", "{root}: windows of 2 shapes: 23 of 32 samples x 3 channel(s) (such as run/0.csv), 1 of 30 samples x "
                "3 channel(s) (such as walk/7.csv). A model takes one input length: cut or pad every window"),
    ("column order", "walk/7.csv in {root} has the columns ay, ax, az where run/0.csv has ax, ay, az: every window's "
                     "channels must come in one order."),
    ("ragged", "walk/7.csv in {root} is not a table of numbers (Some errors were detected !"),
    ("not a number", "walk/7.csv in {root} has a missing, non-numeric or infinite value (sample 2, channel ay; "
                     "counted from 0): fill or drop it, then pack again."),
    ("missing value", "walk/7.csv in {root} has a missing, non-numeric or infinite value (sample 2, channel ax; "
                      "counted from 0)"),
    ("size for signals", "--size and --grey are for images; {root} holds signal files."),
])
def test_signal_windows_that_make_no_dataset_are_refused_in_one_line(tmp_path, capsys, case, said):
    root = tmp_path / "har"
    saved = _windows(root)
    last, args = root / "walk" / "7.csv", []
    lines = last.read_text().splitlines()
    if case == "lengths":
        last.write_text("\n".join(lines[:-2]) + "\n")
    elif case == "column order":
        last.write_text("\n".join(["timestamp,ay,ax,az", *lines[1:]]) + "\n")
    elif case == "ragged":
        last.write_text("\n".join([*lines[:3], "40,1,2", *lines[4:]]) + "\n")
    elif case == "not a number":
        last.write_text("\n".join([*lines[:3], "40,1.0,high,3", *lines[4:]]) + "\n")
    elif case == "missing value":
        last.write_text("\n".join([*lines[:3], "40,,1,2", *lines[4:]]) + "\n")
    else:
        args = ["--size", "32x32"]
    assert saved
    code, _, err = _pack(capsys, root, "--out", tmp_path / "har.npz", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert said.format(root=root) in err
    assert not (tmp_path / "har.npz").exists()


def test_windows_saved_by_a_spreadsheet_read_as_the_same_windows(tmp_path, capsys):
    """Excel's "CSV UTF-8" starts with a byte-order mark and ends lines with CRLF: the time column is still found."""
    saved = _windows(tmp_path / "har")
    for path in saved:
        path.write_text(path.read_text().replace("\n", "\r\n"), encoding="utf-8-sig")
    code, out, err = _pack(capsys, tmp_path / "har", "--out", tmp_path / "har.npz")
    assert code == 0 and "column(s) timestamp left out" in out and "(ax, ay, az)" in out, err
    with np.load(tmp_path / "har.npz") as archive:
        first = sorted(saved, key=lambda p: (p.parent.name, p.name))[0]
        assert np.array_equal(archive["x"][0], saved[first].astype(np.float32))


def test_the_predict_py_of_a_model_of_signals_reads_a_csv_window_as_pack_read_them(tmp_path, capsys):
    """A logger writes a window as a CSV: predict.py classifies it as the array pack made of it, and refuses a window
    it cannot run, a missing file or a file that is not an array in one line each."""
    from search.export import _predict_takes

    saved, out = _windows(tmp_path / "har"), tmp_path / "export"
    card = _exported(capsys, tmp_path / "har", out)
    first = sorted(saved)[0]
    other = next(path for path in sorted(saved) if path.parent != first.parent)  # another class's window
    np.save(tmp_path / "first.npy", saved[first].T)  # channels first, as the search read it
    by_csv, by_array, another = (_predict(out, p) for p in (first, tmp_path / "first.npy", other))
    assert by_csv.returncode == 0, by_csv.stderr
    assert by_csv.stdout == by_array.stdout != another.stdout and "logits" in by_csv.stdout
    assert "; or a window as a .csv, a line per sample" in _predict(out, "--help").stdout
    assert _predict_takes({**card, "artifacts": {"predict.py": ""}}) == ("; predict.py also takes NLC, the order the "
                                                                        "dataset was saved in and a window as a .csv, "
                                                                        "a line per sample")
    assert _predict_takes({**card, "artifacts": {"model.tflite": ""}}) == ""  # an MCU's export has no predict.py

    lines = first.read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:-2]) + "\n")
    (tmp_path / "gap.csv").write_text("\n".join([*lines[:3], "40,,1,2", *lines[4:]]) + "\n")
    (tmp_path / "notes.npy").write_text("not an array\n")
    for name, said in [("short.csv", f"{tmp_path / 'short.csv'} is a window of 30 samples x 3 channel(s); the model "
                                     "takes windows of 32 samples x 3 channel(s), one line per sample"),
                       ("gap.csv", f"{tmp_path / 'gap.csv'} holds a missing, non-numeric or infinite value: the "
                                   "model takes numbers, as in training"),
                       ("notes.npy", f"{tmp_path / 'notes.npy'} is not a .npy array ("),
                       ("absent.npy", f"{tmp_path / 'absent.npy'} does not exist")]:
        refused = _predict(out, tmp_path / name)
        assert refused.returncode == 2 and said in refused.stderr and "Traceback" not in refused.stderr, name
        assert len(refused.stderr.strip().splitlines()) == 2 and not refused.stdout  # argparse's usage, then it
