"""A folder with one subfolder per class, packed into the ``.npz`` dataset a search reads: image files (the layout
Keras' ``image_dataset_from_directory`` and torchvision's ``ImageFolder`` read), or signal windows, one per CSV or
``.npy`` file (as data loggers and Edge Impulse's CSV export write them).

Packed once rather than read from the folder by every search: one file is what a resume checks by content, what a
detached search uploads and a cluster's workers receive, and what an export's card names; decoding thousands of
files again at each start would cost more than the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm",
                            ".pbm"})
SIGNAL_SUFFIXES = frozenset({".csv", ".npy"})
SPLITS = {"train": "train", "test": "test", "val": "val", "validation": "val"}  # a folder's name -> the split
GREY_MODES = frozenset({"1", "L", "LA"})  # 8-bit grey (and black-and-white): read as one channel
DEEP_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # 16-bit or float pixels: not 8-bit
SHOWN = 4  # example files or sizes a message names


@dataclass
class Packed:
    """What ``pack_folder`` wrote, for the command's report."""

    path: Path
    kind: str  # "images" or "signals"
    samples: int
    classes: tuple[str, ...]
    shape: tuple[int, int]  # images: (width, height); signals: (samples per window, channels)
    channels: int
    splits: tuple[str, ...]  # the splits the folder gave ("train", "test", "val"); () when one is drawn
    resized: int = 0
    skipped: list[str] = field(default_factory=list)  # files that are not data (another suffix), relative
    channel_names: tuple[str, ...] = ()  # a CSV header's names of the signal's channels
    time_columns: tuple[str, ...] = ()  # CSV columns left out as times of the samples
    summary: str = ""  # the dataset as a search reads it (``Dataset.summary``)


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` (or one number for a square) as (width, height)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not match or int(match[1]) < 1 or int(match[2] or match[1]) < 1:
        raise DatasetError(f"--size must be WIDTHxHEIGHT in pixels, such as 32x32 or 96x96 (or one number for a "
                           f"square); got {text!r}.")
    return int(match[1]), int(match[2] or match[1])


def _hidden(path: Path, root: Path) -> bool:
    """A dot file or folder (.DS_Store, macOS' ``._x.jpg`` copies of metadata, .ipynb_checkpoints): not data."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _layout(folder: Path) -> dict[str, Path]:
    """The folder of each split: ``train/``, ``test/`` (and ``val/`` or ``validation/``) when the folder has them,
    else the folder itself as one set, of which the dataset loader draws the test and validation splits."""
    top = _class_folders(folder)
    if not top:
        raise DatasetError(f"{folder} holds no class folders: put each class's images in a subfolder named after "
                           f"the class ({folder / 'cat'}/*.png, {folder / 'dog'}/*.png, ...).")
    named = {p.name.lower(): p for p in top}
    if "train" not in named:
        return {"all": folder}
    other = sorted(p.name for p in top if p.name.lower() not in SPLITS)
    if other or "test" not in named:
        raise DatasetError(
            f"{folder} has a train/ folder, so it is read as splits, each with one subfolder per class; "
            + (f"{', '.join(map(repr, other))} is not a split (train, test, val or validation)" if other else
               "it needs test/ beside it") + ". Or put the class folders at the top, and a test split is drawn.")
    if "val" in named and "validation" in named:
        raise DatasetError(f"{folder} has both val/ and validation/: keep one validation split.")
    found = {SPLITS[name]: path for name, path in named.items()}
    return {split: found[split] for split in ("train", "test", "val") if split in found}


def _files(root: Path, skipped: list[str], base: Path) -> dict[str, list[Path]]:
    """Each class folder's data files under ``root``, sorted (sub-folders included, as Keras reads them)."""
    classes = {}
    for cls in _class_folders(root):
        found = []
        for path in sorted(p for p in cls.rglob("*") if p.is_file() and not _hidden(p, base)):
            if path.suffix.lower() in IMAGE_SUFFIXES | SIGNAL_SUFFIXES:
                found.append(path)
            else:
                skipped.append(str(path.relative_to(base)))
        classes[cls.name] = found
    for path in sorted(root.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            skipped.append(str(path.relative_to(base)))  # beside the class folders: it has no class
    return classes


def _open(path: Path, base: Path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)  # a phone's photo, upright as every viewer shows it
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{path.relative_to(base)} in {base} is not a readable image ({exc}): remove or replace "
                           "it, then pack again.") from None


def _sizes_differ(sizes: Counter, example: dict) -> str:
    shown = ", ".join(f"{n} of {w}x{h} (such as {example[(w, h)]})" for (w, h), n in sizes.most_common(SHOWN))
    more = f" and {len(sizes) - SHOWN} more sizes" if len(sizes) > SHOWN else ""
    return (f"images of {len(sizes)} sizes: {shown}{more}. A model takes one input size: pass --size WxH to resize "
            "every image to it (the smaller, the faster on a device: 32x32 to 96x96 is usual on a microcontroller).")


def pack_folder(folder: str | Path, out: str | Path, size: tuple[int, int] | None = None,
                grey: bool = False, progress=None) -> Packed:
    """Read every image or signal file of ``folder`` into the arrays saved as ``out`` (.npz) with the class names
    and the axis order. ``progress(done, total)`` is called as files are read."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder" + (" (a relative path is read from the current folder, "
                           f"{Path.cwd()})." if not folder.is_absolute() and not folder.exists() else "."))
    if out.suffix != ".npz":
        raise DatasetError(f"--out must name a .npz file (the dataset a search reads); got {str(out)!r}.")
    skipped: list[str] = []
    splits = {split: _files(root, skipped, folder) for split, root in _layout(folder).items()}
    names = tuple(splits.get("train", splits.get("all")))
    listed = [(split, name, path) for split, classes in splits.items() for name, files in classes.items()
              for path in files]
    images = any(path.suffix.lower() in IMAGE_SUFFIXES for _, _, path in listed)
    if images:  # a CSV among images is a table about them (labels, boxes), not a signal window: not data here
        skipped += [str(path.relative_to(folder)) for _, _, path in listed if path.suffix.lower() in SIGNAL_SUFFIXES]
        listed = [(split, name, path) for split, name, path in listed if path.suffix.lower() in IMAGE_SUFFIXES]
        skipped.sort()
    held = Counter((split, name) for split, name, _ in listed)
    for split, classes in splits.items():
        empty = [name for name in classes if not held[split, name]]
        if empty:
            kinds = IMAGE_SUFFIXES if images else IMAGE_SUFFIXES | SIGNAL_SUFFIXES
            raise DatasetError(f"{folder}: class folder(s) {', '.join(map(repr, empty))}"
                               + (f" of {split}/" if split != "all" else "") + f" hold no "
                               + ("image" if images else "image or signal") + f" file ({', '.join(sorted(kinds))}): "
                               "add some or remove the folder.")
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise DatasetError(f"{folder}: {split}/ has class folder(s) {', '.join(map(repr, unknown))} that train/ "
                               f"has not ({', '.join(names)}): a model learns only the classes it trains on.")
    if len(names) < 2:
        raise DatasetError(f"{folder}: one class folder ({names[0]!r}); a classifier needs at least 2.")
    if not images and (size or grey):
        raise DatasetError(f"--size and --grey are for images; {folder} holds signal files.")
    paths = [path for _, _, path in listed]
    samples, arrays, read = (_images(paths, folder, size, grey, progress) if images
                             else _signals(paths, folder, progress))
    arrays["class_names"] = np.array(names)
    for split in splits:
        key = "" if split == "all" else f"_{split}"
        arrays[f"x{key}"] = np.stack([x for (s, _, _), x in zip(listed, samples) if s == split])
        arrays[f"y{key}"] = np.array([name for s, name, _ in listed if s == split])
    summary = _save(arrays, out, folder, "images" if images else "windows")
    given = tuple(split for split in splits if split != "all")
    return Packed(out, "images" if images else "signals", len(listed), names, splits=given, skipped=skipped,
                  summary=summary, **read)


def _images(paths: list[Path], folder: Path, size, grey: bool, progress) -> tuple[list, dict, dict]:
    """Each image's 8-bit pixels (height x width, x 3 for RGB): grey images give one channel and any colour image
    makes every image RGB, unless ``grey``; images of several sizes need ``size``."""
    from PIL import Image

    # the header of each (modes and sizes) before any pixel: a wrong folder is refused at once
    modes, sizes, example = Counter(), Counter(), {}
    for path in paths:
        try:
            with Image.open(path) as image:
                mode, shape = image.mode, image.size
                if (image.getexif() or {}).get(0x0112, 1) in (5, 6, 7, 8):  # rotated a quarter turn to be shown
                    shape = shape[::-1]
        except Exception:
            mode, shape = None, None  # said by _open below, with the file
        if mode in DEEP_MODES:
            raise DatasetError(f"{path.relative_to(folder)} in {folder} has {mode} pixels (16-bit or floating "
                               "point); pack reads 8-bit images: save them as 8-bit, or save your own .npz of the "
                               "values (numpy.savez(x=..., y=...)).")
        modes[mode] += 1
        if shape:
            sizes[shape] += 1
            example.setdefault(shape, path.relative_to(folder))
    if size is None and len(sizes) > 1:
        raise DatasetError(f"{folder}: {_sizes_differ(sizes, example)}")
    channels = 1 if grey or set(modes) <= GREY_MODES | {None} else 3
    target = size or next(iter(sizes))
    samples, resized = [], 0
    for done, path in enumerate(paths, 1):
        image = _open(path, folder).convert("L" if channels == 1 else "RGB")
        if image.size != target:
            image = image.resize(target, Image.Resampling.BILINEAR)
            resized += 1
        samples.append(np.asarray(image, dtype=np.uint8))
        if progress:
            progress(done, len(paths))
    arrays = {"layout": np.array("NHW" if channels == 1 else "NHWC"), "from_images": np.array(True)}
    return samples, arrays, {"shape": target, "channels": channels, "resized": resized}


def read_window(text: str):
    """A CSV window, read alike by ``edgesearch pack`` and an export's predict.py (which carries this function's
    source): rows are samples in time, columns channels, separated by commas, semicolons, tabs or spaces; a first
    line with a field that is no number names the channels, and a time column among them is left out (a model fed
    it would learn when a window was recorded). A single line of numbers is one channel's samples, written as a row
    (a window of one sample classifies nothing). Returns the window (an empty or unreadable cell is NaN), its
    channels' names and the time columns left out; raises ValueError saying what is not a window."""
    import re

    import numpy as np

    time_column = re.compile(r"(?i)^\s*(timestamp|time|t|time_?(ms|us|s)|ms|seconds|elapsed)\s*$")
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not lines:
        raise ValueError("is empty: a window is one line per sample, of every channel's value")
    first = lines[0]
    sep = next((c for c in (",", ";", "\t") if c in first), None)
    fields = [f.strip().strip('"') for f in (first.split(sep) if sep else first.split())]

    def number(field: str) -> bool:
        try:
            float(field)
            return True
        except ValueError:
            return False

    header = not all(number(f) for f in fields)
    names = tuple(fields) if header else ()
    times = [i for i, name in enumerate(names) if time_column.match(name)]
    keep = [i for i in range(len(fields)) if i not in times]
    try:
        window = np.genfromtxt(lines[1:] if header else lines, delimiter=sep, ndmin=2, dtype=np.float64,
                               usecols=keep if times else None)
    except ValueError as exc:
        raise ValueError(f"is not a table of numbers ({' '.join(str(exc).split())}): each line one sample of every "
                         "channel, separated by commas, and at most one line of column names first") from None
    if not header and len(lines) == 1:
        window = window.T
    return window, tuple(names[i] for i in keep) if names else (), tuple(names[i] for i in times)


def _csv(path: Path, folder: Path) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    try:
        return read_window(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        raise DatasetError(f"{path.relative_to(folder)} in {folder} {exc}: mend or remove it, then pack "
                           "again.") from None


def _signals(paths: list[Path], folder: Path, progress) -> tuple[list, dict, dict]:
    """Each window as (samples, channels), float32: from a CSV (``_csv``) or an .npy of shape (L,) or (L, C).
    Every window must have one length and one set of channels, named alike where the files name them."""
    samples, shapes, example, names, named_in, times = [], Counter(), {}, None, None, ()
    for done, path in enumerate(paths, 1):
        rel = path.relative_to(folder)
        if path.suffix.lower() == ".npy":
            try:
                window, named, left = np.load(path, allow_pickle=False), (), ()
            except Exception as exc:
                raise DatasetError(f"{rel} in {folder} is not a readable .npy of numbers ({exc}): save each "
                                   "window with numpy.save(file, array).") from None
        else:
            window, named, left = _csv(path, folder)
        window = np.asarray(window)
        if window.ndim == 1:
            window = window[:, None]
        if window.ndim != 2 or not window.size or not np.issubdtype(window.dtype, np.number):
            raise DatasetError(f"{rel} in {folder} holds an array of shape {window.shape} ({window.dtype}); a window "
                               "is one column of samples or a table of samples x channels, of numbers.")
        bad = np.argwhere(~np.isfinite(window.astype(np.float64)))
        if len(bad):
            sample, channel = bad[0]
            raise DatasetError(f"{rel} in {folder} has a missing, non-numeric or infinite value (sample {sample}, "
                               f"channel {named[channel] if named else channel}; counted from 0): fill or drop it, "
                               "then pack again.")
        if named:
            if names is not None and named != names:
                raise DatasetError(f"{rel} in {folder} has the columns {', '.join(named)} where "
                                   f"{named_in} has {', '.join(names)}: every window's channels must come "
                                   "in one order.")
            names, times, named_in = named, left, named_in or rel
        shapes[window.shape] += 1
        example.setdefault(window.shape, rel)
        samples.append(window.astype(np.float32))
        if progress:
            progress(done, len(paths))
    if len(shapes) > 1:
        shown = ", ".join(f"{n} of {length} samples x {channels} channel(s) (such as {example[(length, channels)]})"
                          for (length, channels), n in shapes.most_common(SHOWN))
        raise DatasetError(f"{folder}: windows of {len(shapes)} shapes: {shown}"
                           + (f" and {len(shapes) - SHOWN} more" if len(shapes) > SHOWN else "")
                           + ". A model takes one input length: cut or pad every window to one length (and keep "
                           "one set of channels), then pack again.")
    length, channels = next(iter(shapes))
    if channels == 1:
        samples = [window[:, 0] for window in samples]
    arrays = {"layout": np.array("NL" if channels == 1 else "NLC")}
    return samples, arrays, {"shape": (length, channels), "channels": channels, "channel_names": names or (),
                             "time_columns": times}


def _save(arrays: dict, out: Path, folder: Path, what: str) -> str:
    """Write ``out`` whole or not at all, once it loads as a search loads it; returns its summary as read."""
    from search.data import load_npz

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.{os.getpid()}.partial.npz")
    try:
        np.savez_compressed(partial, **arrays)
        try:
            read = load_npz(partial)  # refused as a search would refuse it (too few files of a class to split, ...)
        except DatasetError as exc:  # said of the folder: the file it would have been is not there
            said = re.sub(r"Save the archive with .*?, or with more (\w+ )?samples",
                          lambda m: f"Add {m[1] or ''}{what}", str(exc).replace(str(partial), f"{folder} packed"))
            raise DatasetError(f"{said} Or give the folder splits of its own: train/ and test/ (and val/), each with "
                               "the class folders.") from None
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return dataclasses.replace(read, name=out.stem).summary()  # named after the file, as a search names it
