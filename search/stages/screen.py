"""Screening stage: does a candidate fit the target at all, before any training?

Latency, RAM and flash of a dense graph depend on its shapes and precision, not on its
trained weights. So the candidate is built untrained at its final shapes (width, the
channels structured pruning removes, the zeros unstructured pruning leaves where the
target's kernels skip them), exported at its precision with placeholder quantization
parameters (calibrated on a few training samples), compiled (or, for TensorFlow Lite
Micro, converted) and timed (or emulated) exactly as the trained one will be. A candidate
that cannot fit is ruled out in seconds instead of after a training run. Results are
cached per shape and target.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hardware_targets import TargetProfile, get_backend
from hardware_targets.host import host_cpu
from objectives.latency import clearly_over_budget
from objectives.memory import over_limits
from search.candidate import Candidate
from search.data import Dataset

SCREEN_REPEATS = 10
AGAINST_FP32_ROUNDS = 15  # fp32 against a narrower precision, in turns: a decision for the whole search
TFLITE_NAME = "model.tflite"  # a TFLite Micro profile's screened graph, converted as the trained one will be
CALIBRATION_SAMPLES = 8  # placeholder int8 scales: enough for onnxruntime's calibrator, weights are untrained
# the sources whose change alters a screened graph or its build: a cached figure from older code is not reused
_SOURCES = ("search/models.py", "search/stages/compress.py", "search/stages/export.py", "search/stages/screen.py",
            "search/stages/tflite.py", "search/stages/tflite_convert.py", "hardware_targets/compile.py",
            "hardware_targets/integer.py")


def shape_knobs(candidate: Candidate, profile: TargetProfile) -> tuple:
    """The knobs that decide latency and memory on ``profile``: temperature and alpha never do, and unstructured
    zeros only where the profile's kernels skip them."""
    structured = candidate.sparsity if candidate.pruning == "structured" else 0.0
    unstructured = candidate.sparsity if (candidate.pruning == "unstructured"
                                          and profile.unstructured_sparsity_speedup) else 0.0
    return (candidate.precision, candidate.width, structured, unstructured)


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    return hashlib.sha256(b"".join((root / s).read_bytes() for s in _SOURCES)).hexdigest()[:12]


def shape_key(candidate: Candidate, dataset: Dataset, profile: TargetProfile, root: Path,
              runtime: str = "auto") -> str:
    """Names one screened graph on one target (for the host, one CPU kind and the runtimes it may ship on; for an
    emulated profile, the calibration it is emulated with)."""
    from hardware_targets.calibration import load_calibration
    from search.pipeline import host_build_target

    calibration = load_calibration(profile, root) if profile.backend == "emulated" else None
    parts = {"knobs": shape_knobs(candidate, profile), "prune_steps": candidate.budget.prune_steps,
             "shape": list(dataset.sample_shape), "classes": dataset.num_classes, "target": profile.tvm_target,
             "build": host_build_target(profile, candidate.precision) if profile.backend != "emulated" else None,
             "profile": profile.name, "code": _code_version(),
             "cpu": host_cpu().key if profile.backend == "local" else None,
             "runtime": runtime if profile.backend == "local" else None,
             "calibration": dataclasses.asdict(calibration) if calibration else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def untrained_graph(candidate: Candidate, dataset: Dataset, onnx_path: Path):
    """Export the ONNX graph ``candidate`` deploys, at its final shapes and precision, with untrained weights: latency
    and memory depend on these alone (dense kernels). Returns the model, for a converter to take as well."""
    import torch

    from search.models import build_model
    from search.stages.compress import freeze_qat, prepare_qat, prune_model
    from search.stages.export import export_onnx

    torch.manual_seed(candidate.seed)
    candidate = _untrained(candidate)
    model = build_model(dataset.sample_shape, dataset.num_classes, candidate.width)
    # A fresh batch norm folds into an all-zero bias, which the exporter drops, and its all-ones tensors are
    # shared as one constant; a trained one's are not. Give it parameters of the kind training leaves.
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.normal_(1, 0.1)
                bn.bias.normal_(0, 0.1)
    model, _ = prune_model(model, candidate, dataset)
    if candidate.precision == "int8-qat":
        model = prepare_qat(model, dataset)
        with torch.no_grad():  # observers set placeholder scales from a few samples
            model(torch.from_numpy(dataset.x_train[:CALIBRATION_SAMPLES]))
        model = freeze_qat(model)
    export_onnx(model.eval(), candidate, dataset, onnx_path)
    return model


def _untrained(candidate: Candidate) -> Candidate:
    """``candidate`` without fine-tuning, its int8 scales calibrated on a few samples: placeholders suffice."""
    no_training = dataclasses.replace(candidate.budget, finetune_epochs=0, calibration_samples=CALIBRATION_SAMPLES)
    return dataclasses.replace(candidate, budget=no_training)


def _build(candidate: Candidate, dataset: Dataset, profile: TargetProfile, root: Path, tmp: Path):
    """The untrained graph of ``candidate`` in ``tmp`` and what the profile runs of it: ``(onnx_path, artifact)``."""
    from hardware_targets.compile import CompiledArtifact, compile_tvm
    from search.pipeline import host_build_target, target_build
    from search.stages.export import input_dtype

    cache_dir = root / "tuning"
    dtype = input_dtype(candidate.precision)
    shape = (1, *dataset.sample_shape)
    onnx_path = tmp / f"{candidate.precision}-{candidate.width:g}.onnx"
    model = untrained_graph(candidate, dataset, onnx_path)
    if profile.runtime == "tflite-micro":  # the device model reads the graph; the RAM is the .tflite's arena
        from search.stages.tflite import convert_tflite

        convert_tflite(model, _untrained(candidate), dataset, tmp / TFLITE_NAME)
        return onnx_path, CompiledArtifact("", dict(profile.tvm_target), shape, dtype.name)
    if profile.backend == "local":
        return onnx_path, compile_tvm(onnx_path, host_build_target(profile, candidate.precision),
                                      onnx_path.with_suffix(".so"), shape, dtype.name, cache_dir=cache_dir,
                                      seed=candidate.seed)
    # what a board loads, or what an emulated target's flash would hold
    host = CompiledArtifact("", host_build_target(profile, candidate.precision), shape, dtype.name)
    return onnx_path, target_build(onnx_path, profile, host, tmp, cache_dir)


def _measure(candidate: Candidate, dataset: Dataset, profile: TargetProfile, root: Path, threads: int,
             runtime: str = "auto") -> dict:
    from search.pipeline import measure_searched, memory_metrics, set_threads, tflm_memory_metrics
    from search.stages.export import input_dtype, ort_session

    set_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, artifact = _build(candidate, dataset, profile, root, Path(tmp))
        tflite = Path(tmp) / TFLITE_NAME if profile.runtime == "tflite-micro" else None
        sample = dataset.x_val[:1].astype(input_dtype(candidate.precision))
        session = ort_session(onnx_path, threads) if profile.backend == "local" else None
        _, metrics = measure_searched(get_backend(profile, root), artifact, tflite or onnx_path, candidate.precision,
                                      sample, SCREEN_REPEATS, session=session, runtime=runtime)
        if tflite:
            # The arena TFLM needs for the converted graph, as the trained candidate's is found. The ONNX graph's
            # estimate counted int8 activations at float width, over three times the arena of a 96x96 int8 model,
            # and screened out candidates that fit (NOTES.md).
            from search.stages.tflite import arena_bytes

            metrics.update(tflm_memory_metrics(tflite, onnx_path, arena_bytes(tflite), profile))
        else:
            metrics.update(memory_metrics(onnx_path, artifact.library, profile))
    return {name: [m.value, m.unit, m.provenance] for name, m in metrics.items()}


def screen_candidate(candidate: Candidate, dataset: Dataset, profile: TargetProfile, root: Path, *,
                     latency_budget_ms: float, threads: int = 1, runtime: str = "auto") -> dict[str, Any]:
    """Whether ``candidate`` can fit ``profile``'s latency budget and memories, from its untrained graph, in the
    runtime it would ship on untuned (``runtime``: auto = the faster of TVM and onnxruntime on a local target).

    Returns ``fits``, a ``reason`` when it cannot (and which: ``over_budget``, ``over_memory``), the figures of the
    untrained graph (``metrics``, each ``[value, unit, provenance]``), the target's ``limits``, ``seconds`` spent and
    whether it was ``cached``."""
    from search.pipeline import limits

    started = time.perf_counter()
    cache = Path(root) / "screening" / f"{shape_key(candidate, dataset, profile, root, runtime)}.json"
    cached = cache.is_file()
    if cached:
        metrics = json.loads(cache.read_text())
    else:
        metrics = _measure(candidate, dataset, profile, Path(root), threads, runtime)
        _store(cache, metrics)
    median = metrics["latency_ms_median"][0]
    provenance = metrics["latency_ms_median"][2]
    reasons = []
    over_budget = clearly_over_budget(median, latency_budget_ms, provenance)
    if over_budget:
        reasons.append(f"{median:.4g} ms ({provenance}, untrained graph of the same shapes) is over the "
                       f"{latency_budget_ms:g} ms budget")
    memory = over_limits({name: figure[0] for name, figure in metrics.items()}, limits(profile))
    reasons += memory
    return {"fits": not reasons, "reason": "; ".join(reasons) or None, "over_budget": over_budget,
            "over_memory": bool(memory), "metrics": metrics, "limits": limits(profile),
            "seconds": time.perf_counter() - started, "cached": cached}


def against_fp32(precision: str, space, dataset: Dataset, profile: TargetProfile, root: Path, *, budget, seed: int,
                 threads: int = 1, runtime: str = "auto") -> list[tuple[float, float, float, str, str]]:
    """Median latency of the untrained fp32 and ``precision`` graphs of the same shapes at the space's narrowest and
    widest widths on a local target, each on the runtime it would be searched on (``runtime``; auto = the faster of
    TVM and onnxruntime, as the search judges a candidate), as ``(width, fp32_ms, precision_ms, fp32_runtime,
    precision_runtime)``: whether the narrower precision is a speed-up there at all. Every graph of a width is timed
    in turns (``time_in_turns``), so that a change in the machine's speed between two timings cannot decide: timed
    one after the other, fp32 at width 2 once read 1.36x its figure of another run and int8 stayed in a space where
    it is slower (NOTES.md). The figures are cached with the screenings, so a resumed search decides the same."""
    from hardware_targets.backends.local import onnxruntime_timer, time_in_turns, tvm_timer
    from search.pipeline import set_threads
    from search.stages.export import input_dtype, ort_session

    candidates = {width: [Candidate(precision=p, pruning=space.pruning[0], sparsity=0.0, width=width, budget=budget,
                                    seed=seed) for p in ("fp32", precision)]
                  for width in sorted({space.width[0], space.width[1]})}
    keys = [shape_key(c, dataset, profile, root, runtime) for pair in candidates.values() for c in pair]
    cache = Path(root) / "screening" / f"against-{hashlib.sha256(' '.join(keys).encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        return [tuple(row) for row in json.loads(cache.read_text())]
    set_threads(threads)
    out = []
    for width, pair in candidates.items():
        with tempfile.TemporaryDirectory() as tmp:
            timers = {}
            for c in pair:
                onnx_path, artifact = _build(c, dataset, profile, Path(root), Path(tmp))
                sample = dataset.x_val[:1].astype(input_dtype(c.precision))
                if runtime != "onnxruntime":
                    timers[c.precision, "tvm"] = tvm_timer(artifact.library, sample, artifact.input_dtype)
                if runtime != "tvm":
                    timers[c.precision, "onnxruntime"] = onnxruntime_timer(ort_session(onnx_path, threads), sample)
            timed = time_in_turns(timers, AGAINST_FP32_ROUNDS, rapl=None)
        fastest = [min((t.median_ms, on) for (p, on), t in timed.items() if p == c.precision) for c in pair]
        out.append((width, fastest[0][0], fastest[1][0], fastest[0][1], fastest[1][1]))
    _store(cache, out)
    return out


def _store(cache: Path, figures) -> None:
    """Write a cache file whole or not at all: two workers may screen the same shapes at once."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(figures))
    tmp.replace(cache)
