"""Training stage: plain training, knowledge distillation, and the cached teacher.

The distillation loss is Hinton's: ``alpha * CE(student, y) + (1 - alpha) * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``. The T^2 factor keeps the soft
term's gradient on the same scale as the hard term's when T changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search.candidate import Budget
from search.data import Dataset
from search.models import TEACHER_WIDTH, build_model

BATCH_SIZE = 32
LEARNING_RATE = 1e-2
TEACHER_EPOCHS = Budget().teacher_epochs  # the default budget's; a search passes its own


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    alpha: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``weight``: per-class weights of the hard-label loss (imbalanced classes); the teacher's soft targets
    already carry what it learned of the rare classes."""
    hard = F.cross_entropy(student_logits, labels, weight=weight)
    if teacher_logits is None or alpha >= 1.0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * hard + (1.0 - alpha) * (t * t) * soft


def _batches(x: np.ndarray, y: np.ndarray, generator: torch.Generator):
    order = torch.randperm(len(x), generator=generator)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for start in range(0, len(x), BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE]
        yield xt[idx], yt[idx]


def fit(model: nn.Module, dataset: Dataset, epochs: int, **options) -> nn.Module:
    """Train ``model`` in place on the training split; distil from ``teacher`` if alpha < 1 (``fit_epochs``)."""
    for _ in fit_epochs(model, dataset, epochs, **options):
        pass
    return model


def fit_epochs(
    model: nn.Module,
    dataset: Dataset,
    epochs: int,
    *,
    teacher: nn.Module | None = None,
    temperature: float = 1.0,
    alpha: float = 1.0,
    seed: int = 0,
    lr: float = LEARNING_RATE,
    after_step: Callable[[], None] | None = None,
) -> Iterator[int]:
    """Train ``model`` in place, yielding the number of each epoch as it ends, so long training can show progress.

    ``after_step`` runs after every optimizer step; pruning uses it to keep
    pruned weights at zero while QAT fine-tunes.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(dataset.x_train) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    use_teacher = teacher is not None and alpha < 1.0
    weights = dataset.loss_weights()
    weight = None if weights is None else torch.from_numpy(weights)
    if use_teacher:
        teacher.eval()
    model.train()
    for epoch in range(epochs):
        for xb, yb in _batches(dataset.x_train, dataset.y_train, generator):
            logits = model(xb)
            teacher_logits = None
            if use_teacher:
                with torch.no_grad():
                    teacher_logits = teacher(xb)
            loss = distillation_loss(logits, yb, teacher_logits, temperature, alpha, weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step()
        yield epoch + 1
    model.eval()  # reached once the caller has taken the last epoch (``fit`` always does)


def torch_predictions(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Classes the torch model gives ``x``; only for diagnostics (training, the teacher), never a shipped figure."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the torch model; only for training diagnostics, never reported as the result."""
    return float((torch_predictions(model, x) == y).mean())


def teacher_scores(teacher: nn.Module, dataset: Dataset) -> dict[str, float]:
    """Validation accuracy and balanced accuracy of the teacher: a diagnostic of its torch model (the teacher is
    never shipped), so a user can tell a teacher worth distilling from."""
    from objectives.accuracy import accuracy, balanced_accuracy

    predictions = torch_predictions(teacher, dataset.x_val)
    return {"accuracy": accuracy(predictions, dataset.y_val),
            "balanced_accuracy": balanced_accuracy(predictions, dataset.y_val)}


def code_version() -> str:
    """Changes whenever the model or training code changes, so stale teachers are not reused."""
    here = Path(__file__).resolve()
    sources = [here, here.parent.parent / "models.py"]
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]


def teacher_path(dataset: Dataset, seed: int, cache_dir: Path, epochs: int = TEACHER_EPOCHS) -> Path:
    return Path(cache_dir) / f"{dataset.name}-{dataset.fingerprint}-seed{seed}-e{epochs}-{code_version()}.pt"


def train_teacher(dataset: Dataset, seed: int, cache_dir: Path, epochs: int = TEACHER_EPOCHS) -> Iterator[int]:
    """Train and cache the teacher unless it is cached, yielding each epoch as it ends (nothing when cached).

    A file lock makes concurrent workers train it once: the others wait, then find it cached.
    """
    from filelock import FileLock

    path = teacher_path(dataset, seed, cache_dir, epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.exists():
            return
        torch.manual_seed(seed)
        model = build_model(dataset.sample_shape, dataset.num_classes, TEACHER_WIDTH)
        yield from fit_epochs(model, dataset, epochs, seed=seed)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)  # atomic: a reader without the lock never sees a half-written file


def get_teacher(dataset: Dataset, seed: int, cache_dir: Path, epochs: int = TEACHER_EPOCHS) -> nn.Module:
    """The widest model of the family, trained once per (dataset, seed, epochs, code version) and cached."""
    for _ in train_teacher(dataset, seed, cache_dir, epochs):
        pass
    return load_teacher(dataset, teacher_path(dataset, seed, cache_dir, epochs))


def load_teacher(dataset: Dataset, path: Path) -> nn.Module:
    model = build_model(dataset.sample_shape, dataset.num_classes, TEACHER_WIDTH)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
