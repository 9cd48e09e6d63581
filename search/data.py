"""Datasets, loaded by one function from a built-in name or a user ``.npz`` file (a folder of images or signal files
is packed into one by ``search.pack``).

Nothing is downloaded: ``digits`` ships inside scikit-learn and ``mnist1d`` is
generated locally by its procedural generator. Splits are stratified with a
fixed seed; the test split is only read to report the final accuracy of a
compiled artifact, never to make a search decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.errors import DatasetError

BUILTIN_DATASETS = ("digits", "mnist1d")
SPLIT_SEED = 0
TEST_FRACTION = 0.2  # of all samples, when the data gives no test split (as digits)
VAL_FRACTION = 0.15  # of the training split, when the data gives no validation split
# a largest class this many times the smallest makes plain accuracy flatter a model: the search then says so and
# shows balanced accuracy (mean recall per class) beside it
IMBALANCE_RATIO = 3
# how the training loss weighs classes: alike, or each by its rarity, n / (K n_c) (scikit-learn's 'balanced')
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Channel-first arrays: signals are (N, C, L), images are (N, C, H, W)."""

    name: str
    fingerprint: str  # changes whenever the data changes; keys caches
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    drawn: str = ""  # the splits drawn here rather than given by the data, in words ("" when it gave them all)
    class_weight: str = "none"  # one of CLASS_WEIGHTS; set by ``weighted``, which also changes the fingerprint
    saved_layout: str = ""  # the axis order x was saved in, when channels-last (NHWC, NLC): an export takes it too
    class_names: tuple[str, ...] = ()  # the archive's ``class_names``, label k named class_names[k]; () for none
    unread_keys: tuple[str, ...] = ()  # archive keys edgesearch does not read: most often a misspelt one
    scaling: str = ""  # how a built-in loader scaled its source into x, in words; "" for data used as stored
    from_images: bool = False  # packed from image files (``search.pack``): an export's predict.py reads one too

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def spatial_dims(self) -> int:
        """1 for signals, 2 for images; picks the 1-D or 2-D DS-CNN."""
        return len(self.sample_shape) - 1

    def content_digest(self) -> str:
        """A hash of the arrays themselves: two nodes that each made a built-in dataset made the same one."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def reads_as(self) -> str:
        """How the arrays are read, in words: a user can see at once whether that is what their data holds."""
        if self.spatial_dims == 1:
            channels, length = self.sample_shape
            return f"1-D signals, {channels} channel(s) of {length} samples"
        channels, height, width = self.sample_shape
        return f"images, {channels} channel(s) of {height}x{width}"

    def input_values(self) -> str:
        """The values the model was trained on, in words with their range: a device must feed the same (raw pixel
        values where training saw them raw), which neither the shape nor the dtype says."""
        how = self.scaling or "as stored in the dataset file, unscaled"
        return f"{how}; the training data spans {float(self.x_train.min()):.6g} to {float(self.x_train.max()):.6g}"

    def int8_input_note(self) -> str | None:
        """Why int8 candidates would lose the input, or None: an int8 model quantises its whole input with one
        scale (onnxruntime's and TFLite's converters alike), set by the training data's full range, so a channel
        whose samples vary by less than one step of it (a channel on a small scale beside a large one, a small
        signal on a large per-sample offset) reaches the network as a few levels."""
        x = self.x_train
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)  # the range always holds zero
        step = (high - low) / 255
        if step == 0:
            return None
        spread = np.median(x.std(axis=tuple(range(2, x.ndim))), axis=0)  # per channel, in a typical sample
        lost = [c for c in range(x.shape[1]) if spread[c] < step]
        if not lost:
            return None
        where = "the input" if x.shape[1] == 1 else f"channel(s) {', '.join(map(str, lost))} of the input"
        means = x.mean(axis=tuple(range(2, x.ndim)))  # each sample's offset, per channel
        per_sample = any(means[:, c].std() > step for c in lost)
        return (f"int8 candidates will see little of {where}: one int8 step of the training data's range "
                f"({low:.6g} to {high:.6g}) is {step:.3g}, more than a typical sample varies there (median standard "
                f"deviation {min(spread[c] for c in lost):.3g}), and int8 quantises the whole input with that one "
                "step. Before saving the dataset, and on the device before the model, "
                + ("subtract each sample's own mean (its offset moves from sample to sample by more than a step) if "
                   "the offset tells no class apart, then " if per_sample else "")
                + "standardise each channel (subtract its training mean, divide by its standard deviation). fp32 "
                "and fp16 candidates are not affected")

    def weighted(self, class_weight: str) -> "Dataset":
        """The same data trained with ``class_weight``: a fingerprint of its own, so teachers, baselines and
        candidates trained one way are never taken for the other's."""
        if class_weight not in CLASS_WEIGHTS:
            raise DatasetError(f"The class weight must be one of {list(CLASS_WEIGHTS)}; got {class_weight!r}.")
        if class_weight == self.class_weight:
            return self
        base = self.fingerprint.removesuffix(f"-{self.class_weight}")
        return dataclasses.replace(self, class_weight=class_weight,
                                   fingerprint=base if class_weight == "none" else f"{base}-{class_weight}")

    def loss_weights(self) -> np.ndarray | None:
        """Per-class weights of the training loss, or None when classes count alike."""
        if self.class_weight != "balanced":
            return None
        return (len(self.y_train) / (self.num_classes * np.maximum(self.class_counts(), 1))).astype(np.float32)

    def class_counts(self) -> np.ndarray:
        """Training samples per class."""
        return np.bincount(self.y_train, minlength=self.num_classes)

    @property
    def imbalanced(self) -> bool:
        counts = self.class_counts()
        return bool(counts.max() >= IMBALANCE_RATIO * max(1, counts.min()))

    def majority(self) -> tuple[int, float]:
        """The largest training class and its share of the validation split: the accuracy of a model that always
        predicts it, which learned nothing."""
        largest = int(self.class_counts().argmax())
        return largest, float((self.y_val == largest).mean())

    def classes(self) -> str:
        """The class balance in words, with what it means for accuracy when it is skewed."""
        counts = self.class_counts()
        weighted = "; the training loss weighs each class by its rarity (class weight 'balanced')"
        shown = self.class_names[:NAMES_SHOWN]
        last = f", ... {self.num_classes - 1} {self.class_names[-1]}" if len(self.class_names) > len(shown) else ""
        named = (" (" + ", ".join(f"{k} {name}" for k, name in enumerate(shown)) + last + ")"
                 if self.class_names else "")
        if not self.imbalanced:
            return f"{self.num_classes} classes{named}" + (weighted if self.loss_weights() is not None else "")
        largest, share = self.majority()
        return (f"{self.num_classes} classes{named}, imbalanced (training samples per class "
                f"{counts.min()}-{counts.max()}; class {largest} holds {counts[largest] / counts.sum():.1%}): "
                f"always predicting class {largest} "
                f"scores {share:.3f} validation accuracy, so balanced accuracy (mean recall per class; "
                f"{1 / self.num_classes:.3f} for a model that learned nothing) is reported beside accuracy"
                + (weighted if self.loss_weights() is not None else
                   "; --class-weight balanced trains for the rare classes, --metric balanced_accuracy ranks by "
                   "them (class_weight, metric in a spec)"))

    def summary(self) -> str:
        unread = (f"; key(s) {', '.join(map(repr, self.unread_keys))} not read (an archive holds "
                  f"{', '.join(ARCHIVE_KEYS)})" if self.unread_keys else "")
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val / {len(self.x_test)} test"
            f"{f' ({self.drawn})' if self.drawn else ''}, {self.reads_as()}, {self.classes()}{unread}"
        )


def load_dataset(name_or_path: str, class_weight: str = "none") -> Dataset:
    """Load a built-in dataset by name, or a user dataset from an ``.npz`` path; ``class_weight`` says how its
    training loss weighs the classes (``CLASS_WEIGHTS``)."""
    if name_or_path in BUILTIN_DATASETS:
        return _BUILTIN_LOADERS[name_or_path]().weighted(class_weight)
    path = Path(name_or_path)
    if path.suffix == ".npz" or path.exists():
        return load_npz(path).weighted(class_weight)
    raise DatasetError(
        f"Unknown dataset {name_or_path!r}: expected one of {list(BUILTIN_DATASETS)} "
        "or the path of an .npz file with x_train, y_train, x_test, y_test (or just x and y)."
    )


def _stratified_split(x, y, fraction, seed=SPLIT_SEED):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=fraction, stratify=y, random_state=seed)


def _finish(name, fingerprint, x_train, y_train, x_test, y_test, x_val=None, y_val=None, test_from="",
            saved_layout="") -> Dataset:
    """``test_from`` names what the test split was drawn from ("" when the data gave it)."""
    drawn = [f"test {TEST_FRACTION:.0%} of {test_from}"] if test_from else []
    if x_val is None:
        x_train, x_val, y_train, y_val = _stratified_split(x_train, y_train, VAL_FRACTION)
        drawn.append(f"val {VAL_FRACTION:.0%} of train")
    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    return Dataset(
        name=name,
        fingerprint=fingerprint,
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.asarray(y_train, dtype=np.int64),
        x_val=np.ascontiguousarray(x_val, dtype=np.float32),
        y_val=np.asarray(y_val, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.asarray(y_test, dtype=np.int64),
        num_classes=num_classes,
        drawn=f"drawn here: {', '.join(drawn)}; stratified by class, seed {SPLIT_SEED}" if drawn else "",
        saved_layout=saved_layout if saved_layout.endswith("C") else "",
    )


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = _stratified_split(x, bunch.target, TEST_FRACTION)
    dataset = _finish("digits", "sklearn-digits-v1", x_train, y_train, x_test, y_test, test_from="the set")
    return dataclasses.replace(dataset, scaling="scikit-learn's pixel counts (0 to 16) divided by 16")


def _load_mnist1d() -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # procedural, seeded; no download
    mean, std = data["x"].mean(), data["x"].std()
    x_train = ((data["x"] - mean) / std)[:, None, :]
    x_test = ((data["x_test"] - mean) / std)[:, None, :]
    dataset = _finish("mnist1d", "mnist1d-default-args-v1", x_train, data["y"], x_test, data["y_test"])
    return dataclasses.replace(dataset, scaling=f"the generated signals standardised: (x {'-' if mean >= 0 else '+'} "
                               f"{abs(mean):.6g}) / {std:.6g}")


_BUILTIN_LOADERS = {"digits": _load_digits, "mnist1d": _load_mnist1d}

_REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
_SPLIT_KEYS = (*_REQUIRED_KEYS, "x_val", "y_val")
# every key an archive may hold: the splits (or x, y), the axis order and the names of the classes
ARCHIVE_KEYS = (*_SPLIT_KEYS, "x", "y", "layout", "class_names")  # and edgesearch pack's own from_images
IMAGE_PIXELS = "8-bit pixel values (0 to 255) as decoded from the image files by edgesearch pack, unscaled"
NAMES_SHOWN = 8  # class names on the dataset's line; the model card lists them all
# the axis orders an archive's optional ``layout`` may name (N samples, C channels, L length, H height, W width);
# each is read into channel-first order, a missing C axis as one channel
LAYOUTS = ("NL", "NCL", "NLC", "NHW", "NCHW", "NHWC")
_CHANNEL_SIZES = (1, 3, 4)  # grey, RGB, RGBA: a last axis of this size after larger ones is most likely channels
# Sensor windows are saved (N, L, C) by most loggers and Keras: 3 to 9 axes of an IMU after 32-1024 time steps.
_MAX_SIGNAL_CHANNELS_LAST = 9
# A 3-D x with at least this many channels and no more samples than channels may hold grey images (N, H, W): the
# reading is asked for rather than guessed.
_MIN_GREY_IMAGE_SIDE = 8


def is_a_folder(path: Path) -> str:
    """What to do with a folder given as a dataset: pack it (``search.pack``) into the one file a search reads."""
    import shlex

    packed = shlex.quote(f"{path.resolve().name or 'images'}.npz")
    return (f"Dataset {str(path)!r} is a folder; a search reads one .npz file. For a folder of images or signal "
            f"files with one subfolder per class, pack it first: edgesearch pack {shlex.quote(str(path))} --out "
            f"{packed} (see edgesearch pack --help), then pass --dataset {packed}.")


def load_npz(path: str | Path) -> Dataset:
    """Load and validate a user dataset; every problem names the key at fault."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(is_a_folder(path))
    if not path.is_file():
        raise DatasetError(f"Dataset file {str(path)!r} does not exist"
                           + ("." if path.is_absolute() else f" (a relative path is read from {Path.cwd()})."))
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not a readable .npz archive (save it with numpy.savez).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DatasetError(f"{path}: cannot be read without pickle ({exc}); save plain numeric arrays.") from exc
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc}).") from exc

    arrays = _labels_as_numbers(path, arrays)
    test_from = ""
    if {"x", "y"} <= arrays.keys() and not any(key in arrays for key in _SPLIT_KEYS):
        arrays, test_from = _draw_test_split(path, arrays), "x"
    missing = [key for key in _REQUIRED_KEYS if key not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {missing}; an .npz dataset needs {list(_REQUIRED_KEYS)} "
                           "(optionally x_val, y_val), or just x and y, of which a stratified test split is drawn.")
    layout = _layout(path, arrays.pop("layout", None))
    names = arrays.pop("class_names", None)
    from_images = bool(arrays.pop("from_images", np.array(False)).any())
    unread = tuple(sorted(key for key in arrays if key not in _SPLIT_KEYS))
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DatasetError(f"{path}: 'x_val' and 'y_val' must be given together or not at all.")

    splits = ["train", "test"] + (["val"] if "x_val" in arrays else [])

    def saved_as(kind: str, split: str) -> str:
        """The key a message names: the one the user saved (``x``, not the split drawn from it)."""
        return kind if test_from else f"{kind}_{split}"

    sample_shape = None
    for split in splits:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_x(path, saved_as("x", split), x)
        _check_y(path, saved_as("y", split), y)
        if len(x) == 0:
            raise DatasetError(f"{path}: '{saved_as('x', split)}' is empty; every split needs at least one sample.")
        if len(x) != len(y):
            raise DatasetError(
                f"{path}: 'x_{split}' has {len(x)} samples but 'y_{split}' has {len(y)}; they must match."
            )
        if sample_shape is None:
            sample_shape = x.shape[1:]
        elif x.shape[1:] != sample_shape:
            raise DatasetError(
                f"{path}: 'x_{split}' has sample shape {x.shape[1:]} but 'x_train' has {sample_shape}; they must match."
            )

    x = {s: _channel_first(path, saved_as("x", s), arrays[f"x_{s}"], layout) for s in splits}
    num_classes = int(max(arrays[f"y_{s}"].max() for s in splits)) + 1
    if num_classes < 2:
        raise DatasetError(f"{path}: labels must cover at least 2 classes; got {num_classes}.")
    missing_classes = sorted(set(range(num_classes)) - set(np.unique(arrays["y_train"]).tolist()))
    if missing_classes:
        used = sorted(set().union(*(np.unique(arrays[f"y_{s}"]).tolist() for s in splits)))
        # labels that are not 0..K-1 at all (1-based, or a few codes), rather than a class absent from training only
        numbered = (f" The labels used are {used[0]}..{used[-1]}, {len(used)} distinct values: number them 0.."
                    f"{len(used) - 1} (np.unique(y, return_inverse=True)), or save them as text labels, which are "
                    "numbered in sorted order and keep their names." if set(missing_classes).isdisjoint(used) else "")
        raise DatasetError(
            f"{path}: 'y_train' has no sample of class(es) {missing_classes}; labels must be 0..{num_classes - 1} "
            f"and every class must appear in training.{numbered}"
        )
    class_names = _class_names(path, names, num_classes)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    try:
        dataset = _finish(
            path.stem, f"npz-{digest}", x["train"], arrays["y_train"], x["test"], arrays["y_test"],
            x.get("val"), arrays.get("y_val"), test_from, layout or "",
        )
        return dataclasses.replace(dataset, class_names=class_names, unread_keys=unread, from_images=from_images,
                                   scaling=IMAGE_PIXELS if from_images else "")
    except ValueError as exc:  # scikit-learn's split: a class with one training sample, or fewer samples than classes
        # scikit-learn's split takes ceil(15% of n) samples, which must hold one of each class, as must the rest
        need = next(n for n in range(2 * num_classes, 10**6)
                    if num_classes <= math.ceil(VAL_FRACTION * n) <= n - num_classes)
        raise DatasetError(
            f"{path}: cannot draw the validation split ({VAL_FRACTION:.0%} of the training samples, stratified by "
            f"class): {str(exc).rstrip('.')}. Save the archive with 'x_val' and 'y_val', or with more training "
            f"samples: at least 2 of every class, and {need} in all for {num_classes} classes (it has "
            f"{len(arrays['y_train'])}).") from exc


def _draw_test_split(path: Path, arrays: dict) -> dict:
    """``x``/``y`` split into train and test as the built-in digits are; the labels are checked first, since a split
    stratified by them would otherwise fail on them with scikit-learn's words."""
    x, y = arrays.pop("x"), arrays.pop("y")
    _check_y(path, "y", y)
    if len(x) != len(y):
        raise DatasetError(f"{path}: 'x' has {len(x)} samples but 'y' has {len(y)}; they must match.")
    try:
        arrays["x_train"], arrays["x_test"], arrays["y_train"], arrays["y_test"] = _stratified_split(
            x, y, TEST_FRACTION)
    except ValueError as exc:  # a class with one sample, or fewer test samples than classes
        raise DatasetError(
            f"{path}: cannot draw the test split ({TEST_FRACTION:.0%} of 'x', stratified by class): {exc} Save the "
            "archive with x_train, y_train, x_test, y_test, or with more samples of every class.") from exc
    return arrays


def _layout(path: Path, value) -> str | None:
    if value is None:
        return None
    item = value.item() if value.size == 1 else value
    text = _text(item).upper()
    if value.size != 1 or text not in LAYOUTS:
        raise DatasetError(f"{path}: 'layout' must be one of {list(LAYOUTS)} (the order of x's axes); got {value!r}.")
    return text


def _text(value) -> str:
    """A string saved in an archive as text or as bytes (h5py and older tools save bytes)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _labels_as_numbers(path: Path, arrays: dict) -> dict:
    """Labels saved as names (strings) become class numbers, in the order of ``class_names`` where the archive has
    it, else sorted (scikit-learn's LabelEncoder order), and ``class_names`` is set to match; labels saved as
    whole floats (a pandas column) become integers, and booleans (a thresholded score) 0 for False and 1 for True,
    the sorted order again, named so unless the archive names them. A column of labels, (N, 1), as Keras' CIFAR-10
    and a pandas frame's ``.values`` give them, is one label per sample. Anything else is left for ``_check_y`` to
    refuse."""
    keys = [key for key in ("y", "y_train", "y_val", "y_test") if key in arrays]
    arrays = dict(arrays)
    for key in keys:
        if arrays[key].ndim == 2 and arrays[key].shape[1] == 1:
            arrays[key] = arrays[key][:, 0]
    named = [key for key in keys if arrays[key].dtype.kind in "US"]
    for key in keys:
        y = arrays[key]
        if y.dtype.kind == "f" and y.ndim == 1 and np.isfinite(y).all() and (y == np.round(y)).all():
            arrays[key] = y.astype(np.int64)
        elif y.dtype.kind == "b":
            arrays[key] = y.astype(np.int64)
            arrays.setdefault("class_names", np.array(["False", "True"]))
    if not named:
        return arrays
    if len(named) != len(keys):
        raise DatasetError(f"{path}: {named} hold class names but {sorted(set(keys) - set(named))} numbers; save "
                           "every label array the same way.")
    labels = {key: np.array([_text(v) for v in arrays[key].reshape(-1).tolist()]) for key in named}
    if "class_names" in arrays:
        order = _class_names(path, arrays["class_names"], len(arrays["class_names"]))
        unknown = sorted(set().union(*(set(v.tolist()) for v in labels.values())) - set(order))
        if unknown:
            raise DatasetError(f"{path}: label(s) {unknown[:5]} are not in 'class_names' {list(order)}.")
    else:
        order = tuple(sorted(set().union(*(set(v.tolist()) for v in labels.values()))))
        arrays["class_names"] = np.array(order)
    index = {name: k for k, name in enumerate(order)}
    for key in named:
        if arrays[key].ndim != 1:
            raise DatasetError(f"{path}: '{key}' must be 1-D (one label per sample); got shape {arrays[key].shape}.")
        arrays[key] = np.array([index[v] for v in labels[key].tolist()], dtype=np.int64)
    return arrays


def _class_names(path: Path, value, num_classes: int) -> tuple[str, ...]:
    """The optional ``class_names``: one distinct, non-empty name per label 0..K-1, which the model card, predict.py
    and main.cc print beside the class number."""
    if value is None:
        return ()
    if value.ndim != 1 or value.dtype.kind not in "US":
        raise DatasetError(f"{path}: 'class_names' must be a 1-D array of strings, one per label 0..K-1 (e.g. "
                           f"np.array(['yes', 'no'])); got dtype {value.dtype}, shape {value.shape}.")
    names = tuple(_text(v) for v in value.tolist())
    if len(names) != num_classes:
        raise DatasetError(f"{path}: 'class_names' has {len(names)} name(s), but the labels are 0..{num_classes - 1} "
                           f"({num_classes} classes); give one name per label, in label order.")
    blank = [k for k, name in enumerate(names) if not name.strip()]
    if blank:
        raise DatasetError(f"{path}: 'class_names' has an empty name for label(s) {blank}.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"{path}: 'class_names' names {repeated} more than once; each label needs its own name.")
    return names


def _looks_channels_last(x: np.ndarray) -> bool:
    """A last axis of a few values after a larger one: channels saved last, which the default reading would
    take for the shortest spatial axis."""
    if x.ndim == 4:
        return x.shape[3] in _CHANNEL_SIZES and x.shape[1] not in _CHANNEL_SIZES
    if x.ndim == 3:
        return x.shape[2] <= _MAX_SIGNAL_CHANNELS_LAST and x.shape[1] >= 4 * x.shape[2]
    return False


def _could_be_grey_images(x: np.ndarray) -> bool:
    """At least as many channels as samples, and several: (28, 28) from Keras' MNIST or (8, 8) from scikit-learn's
    ``load_digits().images`` are grey images, and signals are most often far longer than they have channels."""
    return x.ndim == 3 and x.shape[1] >= max(x.shape[2], _MIN_GREY_IMAGE_SIDE)


def _channel_first(path: Path, key: str, x: np.ndarray, layout: str | None) -> np.ndarray:
    """``x`` in the order the models read: (N, C, L) for signals, (N, C, H, W) for images."""
    if layout is None:
        if _looks_channels_last(x):
            last, first = ("NHWC", "NCHW") if x.ndim == 4 else ("NLC", "NCL")
            kind, unit = ("images", "") if x.ndim == 4 else ("signals", " samples")
            raise DatasetError(
                f"{path}: '{key}' holds samples of shape {x.shape[1:]}, which look channels-last "
                f"({', '.join(last[1:])}); {kind} are read as ({', '.join(first[1:])}), which would make "
                f"{x.shape[1]} channels of {'x'.join(map(str, x.shape[2:]))}{unit}. Save the archive with "
                f"layout='{last}' to have it read as channels-last, or layout='{first}' if that reading is right.")
        if _could_be_grey_images(x):
            raise DatasetError(
                f"{path}: '{key}' holds samples of shape {x.shape[1:]}, which may be grey images (H, W) as well as "
                f"signals; read as saved, (C, L), they would be {x.shape[1]} channels of {x.shape[2]} samples. Save "
                "the archive with layout='NHW' to have them read as images of one channel, layout='NLC' for signals "
                "saved time first, or layout='NCL' if that reading is right.")
        layout = {2: "NL", 3: "NCL", 4: "NCHW"}[x.ndim]
    if len(layout) != x.ndim:
        raise DatasetError(f"{path}: 'layout' is {layout!r}, {len(layout)} axes, but '{key}' has {x.ndim} "
                           f"(samples of shape {x.shape[1:]}).")
    if "C" not in layout:  # one channel
        return x[:, None]
    return np.moveaxis(x, layout.index("C"), 1)


def _check_x(path: Path, key: str, x: np.ndarray) -> None:
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DatasetError(f"{path}: '{key}' must hold numbers (float or int); got dtype {x.dtype}.")
    if x.ndim not in (2, 3, 4):
        raise DatasetError(
            f"{path}: '{key}' must have shape (N, L) or (N, C, L) for signals or (N, C, H, W) for images; "
            f"got {x.ndim} axes (samples of shape {x.shape[1:]})."
        )
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DatasetError(f"{path}: '{key}' contains NaN or Inf values.")


def _check_y(path: Path, key: str, y: np.ndarray) -> None:
    if y.ndim == 2 and y.shape[1] > 1:
        raise DatasetError(f"{path}: '{key}' has shape {y.shape}, one row per sample: if it is one-hot, save "
                           f"{key}.argmax(axis=1), the class numbers.")
    if not np.issubdtype(y.dtype, np.integer):
        fractional = (f" with fractions (e.g. {y[np.isfinite(y) & (y != np.round(y))].flat[0]:g})"
                      if y.dtype.kind == "f" and (np.isfinite(y) & (y != np.round(y))).any() else "")
        raise DatasetError(f"{path}: '{key}' must hold class labels, integers 0..K-1 or class names (strings); got "
                           f"dtype {y.dtype}{fractional}.")
    if y.ndim != 1:
        raise DatasetError(f"{path}: '{key}' must be 1-D (one label per sample); got shape {y.shape}.")
    if y.size and y.min() < 0:
        raise DatasetError(f"{path}: '{key}' has negative label {int(y.min())}; labels must be 0..K-1.")
