import numpy as np
import pytest

from search.data import load_dataset, load_npz
from search.errors import DatasetError


def test_builtin_datasets_have_disjoint_stratified_splits(digits, mnist1d):
    assert digits.sample_shape == (1, 8, 8) and digits.spatial_dims == 2
    assert mnist1d.sample_shape == (1, 40) and mnist1d.spatial_dims == 1
    for ds in (digits, mnist1d):
        assert ds.num_classes == 10
        for y in (ds.y_train, ds.y_val, ds.y_test):
            assert set(np.unique(y)) == set(range(10))  # stratified: every class in every split
        train = {row.tobytes() for row in ds.x_train}
        assert not any(row.tobytes() in train for row in ds.x_test)


def test_builtin_datasets_are_reproducible():
    a, b = load_dataset("digits"), load_dataset("digits")
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_unknown_dataset_names_the_options():
    with pytest.raises(DatasetError, match="digits"):
        load_dataset("cifar100")


def _good(n=40, classes=4):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    return dict(x_train=rng.normal(size=(n, 16)).astype(np.float32), y_train=y,
                x_test=rng.normal(size=(n // 2, 16)).astype(np.float32), y_test=y[: n // 2])


def test_valid_npz_loads_as_signals(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez(path, **_good())
    ds = load_npz(path)
    assert ds.sample_shape == (1, 16) and ds.num_classes == 4 and len(ds.x_val) > 0
    assert "1-D signals, 1 channel(s) of 16 samples" in ds.summary()


def _images(shape, n=40, classes=4):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    return dict(x_train=rng.normal(size=(n, *shape)).astype(np.float32), y_train=y,
                x_test=rng.normal(size=(n // 2, *shape)).astype(np.float32), y_test=y[: n // 2])


@pytest.mark.parametrize("layout, shape, read", [
    ("NHWC", (6, 5, 3), (3, 6, 5)),  # channels-last images, as Keras and PIL give them
    ("NHW", (6, 5), (1, 6, 5)),  # grey images without a channel axis
    ("NLC", (16, 2), (2, 16)),  # channels-last signals
    ("NCHW", (6, 5, 3), (6, 5, 3)),  # the default order, said explicitly: kept as it is
])
def test_a_layout_in_the_archive_says_how_x_is_read(tmp_path, layout, shape, read):
    data = _images(shape)
    path = tmp_path / "laid.npz"
    np.savez(path, **data, layout=layout)
    ds = load_npz(path)
    assert ds.sample_shape == read
    # the same numbers, moved: channel c of sample i is what the archive held on its channel axis
    channel = layout.index("C") if "C" in layout else None
    first = data["x_train"][0] if channel is None else np.moveaxis(data["x_train"][0], channel - 1, 0)
    assert any(np.array_equal(x, first.reshape(read)) for x in np.concatenate([ds.x_train, ds.x_val]))
    assert ("images" if len(read) == 3 else "signals") in ds.summary()
    assert ds.saved_layout == (layout if layout.endswith("C") else "")  # an export's predict.py takes it as saved


def test_channels_last_images_without_a_layout_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "hwc.npz"
    np.savez(path, **_images((32, 32, 3)))
    with pytest.raises(DatasetError, match=r"look channels-last .*layout='NHWC'"):
        load_npz(path)
    np.savez(path, **_images((32, 32, 3)), layout="NCHW")  # 32 channels of 32x3 it is, if the user says so
    assert load_npz(path).sample_shape == (32, 32, 3)
    np.savez(path, **_images((32, 32, 3)), layout=b"nhwc")  # bytes, lower case: the same order
    assert load_npz(path).sample_shape == (3, 32, 32)
    for bad, message in (("NCWH", "must be one of"), ("NCL", "3 axes")):
        np.savez(path, **_images((32, 32, 3)), layout=bad)
        with pytest.raises(DatasetError, match=message):
            load_npz(path)


def test_channels_last_signals_without_a_layout_are_refused_with_the_fix(tmp_path):
    """A 3-axis accelerometer window saved (N, 128, 3), as loggers and Keras save it, is not 128 channels of 3."""
    path = tmp_path / "imu.npz"
    np.savez(path, **_images((128, 3)))
    with pytest.raises(DatasetError, match=r"\(128, 3\), which look channels-last \(L, C\).*layout='NLC'"):
        load_npz(path)
    np.savez(path, **_images((128, 3)), layout="NLC")
    assert load_npz(path).sample_shape == (3, 128)
    np.savez(path, **_images((128, 3)), layout="NCL")  # 128 channels of 3 samples it is, if the user says so
    assert load_npz(path).sample_shape == (128, 3)
    for readable in ((3, 128), (9, 36), (4, 4), (7, 5)):  # channel-first, or too few channels to be images
        np.savez(path, **_images(readable))
        assert load_npz(path).sample_shape == readable


def test_samples_that_may_be_grey_images_are_refused_until_the_archive_says(tmp_path):
    """scikit-learn's digits saved as ``load_digits().images`` were read as 8 channels of 8 samples, where the
    built-in digits are 1x8x8 images: the same data got another model, without a word."""
    path = tmp_path / "grey.npz"
    for shape in ((8, 8), (28, 28), (49, 10), (16, 12)):
        np.savez(path, **_images(shape))
        with pytest.raises(DatasetError, match=rf"\({shape[0]}, {shape[1]}\), which may be grey images .* "
                                               rf"{shape[0]} channels of {shape[1]} samples.*layout='NHW'"):
            load_npz(path)
    np.savez(path, **_images((28, 28)), layout="NHW")
    ds = load_npz(path)
    assert ds.sample_shape == (1, 28, 28) and "images, 1 channel(s) of 28x28" in ds.summary()
    np.savez(path, **_images((49, 10)), layout="NLC")  # MFCC frames, time first
    assert load_npz(path).sample_shape == (10, 49)
    np.savez(path, **_images((28, 28)), layout="NCL")  # 28-channel signals it is, if the user says so
    assert load_npz(path).sample_shape == (28, 28)


def test_an_archive_of_just_x_and_y_gets_a_stratified_test_split_drawn(tmp_path):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), [30, 30, 30, 30, 80])  # one class larger: stratified keeps its share in each split
    x = (rng.normal(size=(200, 1, 12, 12)) + y[:, None, None, None]).astype(np.float32)
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=y)
    ds, again = load_npz(path), load_npz(path)
    assert (len(ds.x_test), len(ds.x_train) + len(ds.x_val)) == (40, 160)
    assert np.bincount(ds.y_test).tolist() == [6, 6, 6, 6, 16]
    rows = {r.tobytes(): label for r, label in zip(x, y)}
    held = [r.tobytes() for r in ds.x_test]
    assert all(rows[r] == label for r, label in zip(held, ds.y_test))  # each sample keeps its label
    assert not set(held) & {r.tobytes() for r in np.concatenate([ds.x_train, ds.x_val])}
    np.testing.assert_array_equal(ds.x_test, again.x_test)  # the same split on every load, on every node
    assert "(drawn here: test 20% of x, val 15% of train; stratified by class, seed 0)" in ds.summary()
    np.savez(path, x=x, y=y, x_test=x[:5], y_test=y[:5])  # a partial set of splits is a mistake, not x and y
    with pytest.raises(DatasetError, match=r"missing key\(s\) \['x_train', 'y_train'\].* or just x and y"):
        load_npz(path)
    np.savez(path, x=x[:6], y=np.arange(6))  # a class of one sample cannot be in both splits
    with pytest.raises(DatasetError, match=r"cannot draw the test split \(20% of 'x', stratified by class\)"):
        load_npz(path)
    np.savez(path, x=x, y=y + 0.5)
    with pytest.raises(DatasetError, match=r"'y' must hold class labels, integers 0..K-1 or class names \(strings\); "
                                           r"got dtype float64 with fractions \(e.g. 0.5\)"):
        load_npz(path)
    # a problem found after the split names the key the user saved, and the samples' shape, not the split's
    np.savez(path, x=np.moveaxis(x, 1, 3).repeat(3, axis=3), y=y)  # RGB saved channels-last, no layout
    with pytest.raises(DatasetError, match=r"'x' holds samples of shape \(12, 12, 3\), which look channels-last"):
        load_npz(path)
    np.savez(path, x=np.where(y[:, None, None, None] == 4, np.nan, x), y=y)
    with pytest.raises(DatasetError, match="'x' contains NaN"):
        load_npz(path)


def test_class_names_in_the_archive_name_the_labels_and_a_key_not_read_is_said(tmp_path):
    path = tmp_path / "named.npz"
    np.savez(path, **_good(), class_names=np.array(["yes", "no", "up", "down"]))
    ds = load_npz(path)
    assert ds.class_names == ("yes", "no", "up", "down")
    assert "not read" not in ds.summary()
    # bytes, as h5py and older tools save strings, are names too
    np.savez(path, **_good(), class_names=np.array([b"a", b"b", b"c", b"d"]))
    assert load_npz(path).class_names == ("a", "b", "c", "d")
    # a key edgesearch does not read (here a guess at the names' key) is said on the dataset's line, not dropped
    np.savez(path, **_good(), classes=np.array(["yes", "no", "up", "down"]))
    ds = load_npz(path)
    assert ds.class_names == ()
    assert "key(s) 'classes' not read (an archive holds x_train, y_train, x_test, y_test, x_val, y_val, x, y, " \
           "layout, class_names)" in ds.summary()


def test_labels_saved_as_names_whole_floats_or_booleans_are_read_as_class_numbers(tmp_path):
    path = tmp_path / "named.npz"
    good = _good()
    words = np.array(["walk", "run", "sit", "stairs"])
    np.savez(path, x_train=good["x_train"], y_train=words[good["y_train"]], x_test=good["x_test"],
             y_test=words[good["y_test"]])
    ds = load_npz(path)  # numbered in sorted order, as scikit-learn's LabelEncoder does, and named
    assert ds.class_names == ("run", "sit", "stairs", "walk")
    assert [ds.class_names[k] for k in ds.y_test] == words[good["y_test"]].tolist()
    assert "4 classes (0 run, 1 sit, 2 stairs, 3 walk)" in ds.summary()
    # with class_names beside them, the names' order gives the numbers
    np.savez(path, x=good["x_train"], y=words[good["y_train"]], class_names=words)
    ds = load_npz(path)
    assert ds.class_names == tuple(words)
    assert sorted(ds.y_train.tolist() + ds.y_val.tolist() + ds.y_test.tolist()) == sorted(good["y_train"].tolist())
    np.savez(path, x=good["x_train"], y=words[good["y_train"]], class_names=words[:3])
    with pytest.raises(DatasetError,
                       match=r"label\(s\) \['stairs'\] are not in 'class_names' \['walk', 'run', 'sit'\]"):
        load_npz(path)
    # a pandas column of labels is float: whole values are class numbers
    np.savez(path, **good)
    as_integers = load_npz(path)
    np.savez(path, **{**good, "y_train": good["y_train"].astype(np.float64)})
    as_floats = load_npz(path)
    assert as_floats.y_train.dtype == as_integers.y_train.dtype
    np.testing.assert_array_equal(as_floats.y_train, as_integers.y_train)
    np.testing.assert_array_equal(as_floats.x_val, as_integers.x_val)
    # booleans (a thresholded score) are 0 for False and 1 for True
    two = {key: (good[key] % 2 if key.startswith("y") else good[key]) for key in good}
    np.savez(path, **two)
    as_integers = load_npz(path)
    np.savez(path, **{**two, "y_train": two["y_train"] == 1, "y_test": two["y_test"] == 1})
    as_booleans = load_npz(path)
    assert as_booleans.num_classes == 2 and as_booleans.y_train.dtype == as_integers.y_train.dtype
    assert as_booleans.class_names == ("False", "True") and "2 classes (0 False, 1 True)" in as_booleans.summary()
    np.testing.assert_array_equal(as_booleans.y_train, as_integers.y_train)
    np.testing.assert_array_equal(as_booleans.y_test, as_integers.y_test)


def test_a_column_of_labels_is_one_label_per_sample(tmp_path):
    """Keras' CIFAR-10 gives y as (N, 1), and so does a pandas frame's ``df[["label"]].values``."""
    path = tmp_path / "column.npz"
    good = _good()
    np.savez(path, **good)
    rows = load_npz(path)
    words = np.array(["walk", "run", "sit", "stairs"])
    for column in (lambda y: y[:, None].astype(np.uint8), lambda y: y[:, None].astype(np.float64)):
        np.savez(path, **{k: column(v) if k.startswith("y") else v for k, v in good.items()})
        ds = load_npz(path)
        assert ds.y_train.shape == rows.y_train.shape and ds.num_classes == 4
        assert np.array_equal(ds.x_val, rows.x_val) and np.array_equal(ds.y_val, rows.y_val)
    np.savez(path, **{k: words[v][:, None] if k.startswith("y") else v for k, v in good.items()})
    ds = load_npz(path)
    assert ds.class_names == ("run", "sit", "stairs", "walk")
    assert [ds.class_names[k] for k in ds.y_test] == words[good["y_test"]].tolist()
    np.savez(path, **{**good, "y_train": np.stack([good["y_train"]] * 2, axis=1)})
    with pytest.raises(DatasetError, match=r"has shape \(40, 2\), one row per sample: if it is one-hot"):
        load_npz(path)


@pytest.mark.parametrize(
    "names, message",
    [
        (np.array(["a", "b", "c"]), r"'class_names' has 3 name\(s\), but the labels are 0..3 \(4 classes\)"),
        (np.arange(4), "'class_names' must be a 1-D array of strings"),
        (np.array([["a", "b"], ["c", "d"]]), "must be a 1-D array of strings"),
        (np.array(["a", "b", "a", "c"]), r"names \['a'\] more than once"),
        (np.array(["a", " ", "b", "c"]), r"an empty name for label\(s\) \[1\]"),
    ],
)
def test_bad_class_names_give_a_clear_error(tmp_path, names, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **_good(), class_names=names)
    with pytest.raises(DatasetError, match=message):
        load_npz(path)


def test_too_few_training_samples_for_a_validation_split_say_how_many_would_do(tmp_path):
    """scikit-learn's split takes ceil(15%) of the samples, one of each class at least: 14 do for 3 classes."""
    rng = np.random.default_rng(0)
    for n, labels in ((13, [0] * 5 + [1] * 4 + [2] * 4), (14, [0] * 5 + [1] * 5 + [2] * 4)):
        path = tmp_path / f"{n}.npz"
        np.savez(path, x_train=rng.normal(size=(n, 1, 8, 8)).astype(np.float32), y_train=np.array(labels),
                 x_test=rng.normal(size=(3, 1, 8, 8)).astype(np.float32), y_test=np.arange(3))
        if n == 13:
            with pytest.raises(DatasetError, match=r"at least 2 of every class, and 14 in all for 3 classes \(it "
                                                   r"has 13\)\.$"):
                load_npz(path)
        else:
            assert len(load_npz(path).y_val) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("y_test"), "missing key"),
        (lambda d: d.update(x_train=d["x_train"][:0], y_train=d["y_train"][:0]), "'x_train' is empty"),
        (lambda d: d.update(y_train=d["y_train"] / 3), "'y_train' must hold class labels"),
        (lambda d: d.update(y_train=np.array(["a", "b", "c", "d"])[d["y_train"]]),
         r"\['y_train'\] hold class names but \['y_test'\] numbers"),
        (lambda d: d.update(y_train=d["y_train"][:-1]), "must match"),
        (lambda d: d["x_test"].__setitem__((0, 0), np.nan), "'x_test' contains NaN"),
        (lambda d: d.update(x_test=d["x_test"][:, :8]), "sample shape"),
        (lambda d: d.update(y_train=d["y_train"] - 1), "negative label"),
        (lambda d: d.update(x_train=np.zeros((40,), np.float32)), "'x_train' must have shape"),
        (lambda d: d.update(x_val=d["x_test"]), "given together"),
        (lambda d: d.update(y_train=np.where(d["y_train"] == 2, 0, d["y_train"])), r"no sample of class\(es\) \[2\]; "
         "labels must be 0..3 and every class must appear in training.$"),
        (lambda d: d.update(y_train=d["y_train"] + 1, y_test=d["y_test"] + 1), r"no sample of class\(es\) \[0\].* The "
         r"labels used are 1..4, 4 distinct values: number them 0..3 \(np.unique"),
        (lambda d: d.update(y_train=np.eye(4)[d["y_train"]]), r"one-hot, save y_train.argmax\(axis=1\)"),
        (lambda d: d["y_train"].__setitem__(slice(None), np.where(np.arange(40) == 3, 4, d["y_train"] % 4)),
         "cannot draw the validation split .*x_val"),
    ],
)
def test_bad_npz_gives_a_clear_error(tmp_path, change, message):
    data = _good()
    change(data)
    path = tmp_path / "bad.npz"
    np.savez(path, **data)
    with pytest.raises(DatasetError, match=message):
        load_npz(path)


def test_npz_with_objects_or_garbage_is_refused(tmp_path):
    data = _good()
    data["x_train"] = np.array([object()] * 40, dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **data)
    with pytest.raises(DatasetError, match="pickle"):
        load_npz(path)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match="not a readable"):
        load_npz(garbage)


def _skewed(tmp_path, counts=(180, 20), val=(18, 2)):
    """Classes 9:1 in training and validation; the validation split given, so its shares are known by hand."""
    rng = np.random.default_rng(0)

    def split(per_class):
        y = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
        return rng.normal(size=(len(y), 16)).astype(np.float32), y

    (x, y), (xv, yv), (xt, yt) = split(counts), split(val), split(val)
    path = tmp_path / "skewed.npz"
    np.savez(path, x_train=x, y_train=y, x_val=xv, y_val=yv, x_test=xt, y_test=yt)
    return path


def test_imbalanced_classes_are_said_with_what_always_predicting_the_largest_scores(tmp_path, digits):
    ds = load_npz(_skewed(tmp_path))
    assert ds.imbalanced and ds.majority() == (0, 0.9)
    said = ds.summary()
    assert "2 classes, imbalanced (training samples per class 20-180; class 0 holds 90.0%)" in said
    assert "always predicting class 0 scores 0.900 validation accuracy" in said
    assert "0.500 for a model that learned nothing" in said and "--class-weight balanced" in said
    # 3:1 is where it starts; digits' classes are even
    assert load_npz(_skewed(tmp_path, counts=(60, 20))).imbalanced
    assert not load_npz(_skewed(tmp_path, counts=(59, 20))).imbalanced
    assert not digits.imbalanced and digits.summary().endswith("10 classes")


def test_balanced_class_weights_weigh_each_class_by_its_rarity_under_a_fingerprint_of_their_own(tmp_path):
    path = _skewed(tmp_path)
    plain = load_npz(path)
    weighted = load_dataset(str(path), "balanced")
    assert plain.loss_weights() is None
    # n / (K n_c): 200 / (2 * 180) and 200 / (2 * 20)
    np.testing.assert_allclose(weighted.loss_weights(), [200 / 360, 200 / 40], rtol=1e-6)
    assert weighted.fingerprint != plain.fingerprint  # its teachers, baselines and candidates are its own
    assert weighted.weighted("none").fingerprint == plain.fingerprint
    assert "the training loss weighs each class by its rarity" in weighted.summary()
    with pytest.raises(DatasetError, match=r"one of \['none', 'balanced'\]; got 'inverse'"):
        plain.weighted("inverse")
