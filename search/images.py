"""A folder of image files, one subfolder per class (the layout Keras' ``image_dataset_from_directory`` and
torchvision's ``ImageFolder`` read), packed into the ``.npz`` dataset a search reads.

Packed once rather than read from the folder by every search: one file is what a resume checks by content, what a
detached search uploads and a cluster's workers receive, and what an export's card names; decoding thousands of
images again at each start would cost more than the file.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm",
                            ".pbm"})
SPLITS = {"train": "train", "test": "test", "val": "val", "validation": "val"}  # a folder's name -> the split
GREY_MODES = frozenset({"1", "L", "LA"})  # 8-bit grey (and black-and-white): read as one channel
DEEP_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # 16-bit or float pixels: not 8-bit
SHOWN = 4  # example files or sizes a message names


@dataclass
class Packed:
    """What ``pack_images`` wrote, for the command's report."""

    path: Path
    images: int
    classes: tuple[str, ...]
    size: tuple[int, int]  # width, height
    channels: int
    splits: tuple[str, ...]  # the splits the folder gave ("train", "test", "val"); () when one is drawn
    resized: int = 0
    skipped: list[str] = field(default_factory=list)  # files read as no image (not an image suffix), relative


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
    """Each class folder's image files under ``root``, sorted (sub-folders included, as Keras reads them)."""
    classes = {}
    for cls in _class_folders(root):
        found = []
        for path in sorted(p for p in cls.rglob("*") if p.is_file() and not _hidden(p, base)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
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


def pack_images(folder: str | Path, out: str | Path, size: tuple[int, int] | None = None,
                grey: bool = False, progress=None) -> Packed:
    """Decode every image of ``folder`` into 8-bit pixel arrays saved as ``out`` (.npz) with the class names and
    the axis order. Grey images give one channel and any colour image makes every image RGB, unless ``grey``;
    images of several sizes need ``size``. ``progress(done, total)`` is called as images are read."""
    from PIL import Image

    from search.data import load_npz

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder" + (" (a relative path is read from the current folder, "
                           f"{Path.cwd()})." if not folder.is_absolute() and not folder.exists() else "."))
    if out.suffix != ".npz":
        raise DatasetError(f"--out must name a .npz file (the dataset a search reads); got {str(out)!r}.")
    skipped: list[str] = []
    splits = {split: _files(root, skipped, folder) for split, root in _layout(folder).items()}
    names = tuple(splits.get("train", splits.get("all")))
    for split, classes in splits.items():
        empty = [name for name, files in classes.items() if not files]
        if empty:
            raise DatasetError(f"{folder}: class folder(s) {', '.join(map(repr, empty))}"
                               + (f" of {split}/" if split != "all" else "") + " hold no image file ("
                               f"{', '.join(sorted(IMAGE_SUFFIXES))}): add images or remove the folder.")
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise DatasetError(f"{folder}: {split}/ has class folder(s) {', '.join(map(repr, unknown))} that train/ "
                               f"has not ({', '.join(names)}): a model learns only the classes it trains on.")
    if len(names) < 2:
        raise DatasetError(f"{folder}: one class folder ({names[0]!r}); a classifier needs at least 2.")
    listed = [(split, name, path) for split, classes in splits.items() for name, files in classes.items()
              for path in files]
    # the header of each (modes and sizes) before any pixel: a wrong folder is refused at once
    modes, sizes, example = Counter(), Counter(), {}
    for _, _, path in listed:
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
    x = {split: [] for split in splits}
    y = {split: [] for split in splits}
    resized = 0
    for done, (split, name, path) in enumerate(listed, 1):
        image = _open(path, folder).convert("L" if channels == 1 else "RGB")
        if image.size != target:
            image = image.resize(target, Image.Resampling.BILINEAR)
            resized += 1
        x[split].append(np.asarray(image, dtype=np.uint8))
        y[split].append(name)
        if progress:
            progress(done, len(listed))
    layout = "NHW" if channels == 1 else "NHWC"
    arrays = {"class_names": np.array(names), "layout": np.array(layout), "from_images": np.array(True)}
    for split in splits:
        key = "" if split == "all" else f"_{split}"
        arrays[f"x{key}"], arrays[f"y{key}"] = np.stack(x[split]), np.array(y[split])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.{os.getpid()}.partial.npz")  # a failed pack leaves no half a dataset
    try:
        np.savez_compressed(partial, **arrays)
        try:
            load_npz(partial)  # refused as a search would refuse it (too few images of a class to split, ...)
        except DatasetError as exc:  # said of the folder: the file it would have been is not there
            said = re.sub(r"Save the archive with .*?, or with more (\w+ )?samples",
                          lambda m: f"Add {m[1] or ''}images", str(exc).replace(str(partial), f"{folder} packed"))
            raise DatasetError(f"{said} Or give the folder splits of its own: train/ and test/ (and val/), each with "
                               "the class folders.") from None
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return Packed(out, len(listed), names, target, channels, tuple(s for s in splits if s != "all"), resized,
                  skipped)

