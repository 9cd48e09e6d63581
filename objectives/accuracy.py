"""Accuracy of a compiled artifact, computed by running the artifact itself."""

from __future__ import annotations

import numpy as np


def predict_tvm(library: str, x: np.ndarray, dtype: str) -> np.ndarray:
    """Class predictions of a TVM-compiled batch-1 library, one sample at a time."""
    import tvm

    from hardware_targets.compile import load_vm

    vm = load_vm(library)
    main = vm["main"]
    preds = np.empty(len(x), dtype=np.int64)
    for i in range(len(x)):
        out = main(tvm.runtime.tensor(np.ascontiguousarray(x[i : i + 1], dtype=dtype)))
        preds[i] = int(np.argmax(out.numpy()))
    return preds


def predict_onnx(session, x: np.ndarray, dtype: str) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.array([int(np.argmax(session.run(None, {name: x[i : i + 1].astype(dtype)})[0])) for i in range(len(x))])


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present in ``labels``: a model that always predicts one class scores 1/K
    however skewed the classes are, where its plain accuracy is the largest class's share."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # a predicted class absent from these labels is a wrong answer, nothing more
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(np.asarray(labels), np.asarray(predictions)))


def chance_shortfall(balanced: float, chance: float) -> float:
    """How far a balanced accuracy is from beating chance (``chance`` = 1/K), as an Optuna constraint: above 0
    where the model does no more than predicting one class does. Float noise of the mean of recalls is no gain."""
    return chance + 1e-9 - balanced


def at_chance(balanced: float, chance: float | None) -> bool:
    """Whether a balanced accuracy is no better than chance: the model does what predicting one class does,
    however its plain accuracy reads."""
    return chance is not None and chance_shortfall(balanced, chance) >= 0


def per_class(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Support, recall and precision of each class and the confusion matrix (rows: true class, columns: predicted):
    where a model trades one class for another, which a single accuracy hides. A class never predicted has no
    precision (None); one absent from ``labels`` no recall."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(np.asarray(labels), np.asarray(predictions), labels=list(range(num_classes)))
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    return {"support": support.tolist(), "confusion_matrix": matrix.tolist(),
            "recall": [float(h / n) if n else None for h, n in zip(hits, support)],
            "precision": [float(h / n) if n else None for h, n in zip(hits, predicted)]}
