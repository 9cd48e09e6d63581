"""The candidate pipeline: train -> distil -> prune -> quantize -> ONNX -> TVM -> measure.

``evaluate_candidate`` strings the stage functions together; each stage lives
in ``search/stages`` and can be called alone. Accuracy is measured on the
compiled artifact (validation split for the search, test split for the report),
never on the torch model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hardware_targets import TargetProfile, get_backend, load_profile
from hardware_targets.backends.base import add_work_and_energy, latency_metrics
from hardware_targets.backends.local import LocalBackend, onnxruntime_timer, time_in_turns, tvm_timer
from hardware_targets.compile import CompiledArtifact, compile_tvm
from hardware_targets.host import host_cpu
from hardware_targets.metric import Metric
from hardware_targets.profile import TFLM_PRECISIONS, arithmetic
from objectives.accuracy import accuracy, at_chance, balanced_accuracy, predict_onnx, predict_tvm
from objectives.latency import least_disturbed
from objectives.memory import peak_activation_bytes
from objectives.size import file_bytes, flash_bytes, weight_bytes
from search.candidate import Candidate, CandidateResult
from search.data import Dataset
from search.errors import ConfigError
from search.models import TEACHER_WIDTH, build_model, count_parameters
from search.spec import search_folder
from search.stages.compress import prune_model, quantization_aware_finetune
from search.stages.export import export_onnx, input_dtype, ort_session
from search.stages.train import fit, load_teacher, teacher_path, teacher_scores, train_teacher

Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class Paths:
    """Where a pipeline run reads caches from and writes artifacts to."""

    root: Path  # usually runs/
    # whose candidates these are: a search's (under its own folder, searches/NAME/, with its spec and kept inputs),
    # or None for one-off evaluations (``edgesearch evaluate``, calibration runs), under evaluate/
    search: str | None = None

    @property
    def candidates(self) -> Path:
        return search_folder(self.root, self.search) / "candidates" if self.search else self.root / "evaluate"

    @property
    def teachers(self) -> Path:
        return self.root / "teachers"

    def candidate(self, candidate: Candidate, dataset: Dataset, profile: TargetProfile) -> Path:
        """A candidate's artifact folder, keyed by its knobs and by what else makes its files: the data, the budget
        it trained on and the target it was built for. Two searches that differ only in epochs (or a halving rung
        and the full budget) no longer share a folder, where the later overwrote the files the earlier's trials
        and exports point to. A search's folders lie under its own name: another search of the same data, budget,
        target and knobs (say, after an upgrade that converts or compiles differently) would otherwise rewrite the
        files this one's trials recorded, and its exports would no longer reproduce them."""
        made_by = {k: v for k, v in dataclasses.asdict(candidate.budget).items() if not k.startswith("front_tuning")}
        digest = hashlib.sha256(json.dumps({"budget": made_by, "data": dataset.fingerprint,
                                            "target": profile.tvm_target, "runtime": profile.runtime},
                                           sort_keys=True).encode()).hexdigest()[:8]
        return self.candidates / dataset.name / profile.name / f"{candidate.key()}-{digest}"

    @property
    def tuning(self) -> Path:
        return self.root / "tuning"


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tvm

    from importlib.metadata import version

    return {
        "edgesearch": version("edgesearch"),
        "torch": str(torch.__version__),  # a TorchVersion would make every unpickler import torch
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tvm": tvm.__version__,
    }


def set_threads(threads: int) -> None:
    """Pin torch, TVM and (per session) onnxruntime to the worker's CPUs."""
    torch.set_num_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)


def _machine_profile(profile: TargetProfile) -> TargetProfile:
    """The profile of the machine the host builds run on: ``profile`` itself when it is local, else the host's."""
    return profile if profile.backend == "local" else load_profile("host")


def host_build_target(profile: TargetProfile, precision: str = "fp32") -> dict:
    """The TVM target of the build that runs on this machine (accuracy, host timing): the profile's own for a
    local target, the host profile's otherwise. Generic code for the CPU (faster untuned, NOTES.md), except for a
    precision whose arithmetic needs CPU features (the profile's ``cpu_flags``): LLVM uses them only when told the
    CPU, and without them fp16 runs in software (45-110x slower than with them on an AVX512-FP16 Xeon)."""
    host = _machine_profile(profile)
    kind = arithmetic(precision)
    if kind in (host.cpu_flags or {}) and host.arithmetic_reason(precision) is None:
        return tuned_build_target(host)
    return host.tvm_target


def target_build(onnx_path: Path, profile: TargetProfile, host: CompiledArtifact, out_dir: Path,
                 cache_dir: Path) -> CompiledArtifact:
    """The build the target itself loads, timed by its backend and counted for its flash: the host build for a local
    target, else one for the profile's TVM target, linked by its ``cross_compiler`` when it names one (a shared
    library a board loads over RPC), else a .tar of object files when the target is another architecture (a board's
    RPC server links it)."""
    if profile.backend == "local":
        return host
    cc = profile.cross_compiler
    path = Path(out_dir) / ("target_model.tar" if "mtriple" in profile.tvm_target and not cc else "target_model.so")
    return compile_tvm(onnx_path, profile.tvm_target, path, host.input_shape, host.input_dtype, cache_dir=cache_dir,
                       cc=cc)


def graph_memory_metrics(onnx_path: Path, profile: TargetProfile) -> dict[str, Metric]:
    """What the graph alone says of a candidate's memories: its weights, its peak activations, and RAM estimated
    from them."""
    weights = weight_bytes(onnx_path)
    peak = peak_activation_bytes(onnx_path)
    return {
        # weights at their deployed width, derived from the graph (dense storage; QAT weights at int8)
        "size_bytes": Metric(float(weights["weight_bytes"]), "bytes", "estimated"),
        "ram_bytes": Metric(float(peak + (profile.runtime_ram_overhead_bytes or 0)), "bytes", "estimated"),
        "onnx_bytes": Metric(float(file_bytes(onnx_path)), "bytes", "measured"),
        "peak_activation_bytes": Metric(float(peak), "bytes", "estimated"),
        "nonzero_weight_fraction": Metric(
            weights["nonzero_weights"] / max(1, weights["weights"]), "fraction", "measured"),
    }


def memory_metrics(onnx_path: Path, library: str, profile: TargetProfile) -> dict[str, Metric]:
    """Size, flash and RAM of a candidate: what decides whether it fits the target's memories.

    ``library`` is the build for the target: its code and constants, counted from the file, are the flash."""
    return {**graph_memory_metrics(onnx_path, profile),
            "flash_bytes": Metric(float(flash_bytes(library)), "bytes", "measured"),
            "library_bytes": Metric(float(file_bytes(library)), "bytes", "measured")}


def limits(profile: TargetProfile) -> dict[str, int | None]:
    return {"ram_bytes": profile.sram_bytes, "flash_bytes": profile.flash_bytes}


RUNTIME_PREFIXES = {"tvm": "tvm_latency", "onnxruntime": "ort_latency"}


def measure_searched(backend, artifact: CompiledArtifact, onnx_path: Path, precision: str, sample: np.ndarray,
                     repeats: int, *, session=None, runtime: str = "auto") -> tuple[str | None, dict[str, Metric]]:
    """Latency and energy of what a candidate ships on untuned, and which runtime that is. On a local target, the
    faster (p90) of the TVM library and onnxruntime (given its ``session``), timed in turns, or the ``runtime``
    forced; each one's latency is kept beside as ``tvm_latency_*`` and ``ort_latency_*``. Elsewhere the target's
    backend times (or emulates) its build, and no runtime was chosen (``None``)."""
    if not isinstance(backend, LocalBackend):
        return None, dict(backend.measure(artifact, onnx_path, precision, sample, repeats))
    timed = backend.measure_runtimes(artifact, onnx_path, precision, sample, repeats, session)
    allowed = [key for key in timed if runtime in ("auto", key)]
    if not allowed:
        raise ValueError(f"runtime {runtime!r} was not timed (timed: {sorted(timed)})")
    chosen = min(allowed, key=lambda key: timed[key]["latency_ms_p90"].value)
    metrics = dict(timed[chosen])
    for key, figures in timed.items():
        for name in ("latency_ms_median", "latency_ms_p90"):
            metrics[name.replace("latency", RUNTIME_PREFIXES[key])] = figures[name]
    return chosen, metrics


def evaluate_candidate(
    candidate: Candidate,
    dataset: Dataset,
    profile: TargetProfile,
    paths: Paths,
    *,
    threads: int = 1,
    progress: Progress | None = None,
    runtime: str = "auto",
) -> CandidateResult:
    """Build, compile and measure one candidate; raises ``CandidateError`` naming the failed stage. On a local
    target its latency and accuracy are those of the runtime it ships on untuned (``measure_searched``)."""
    missing = profile.unsupported_reason(candidate.precision) if profile.runtime == "tflite-micro" else None
    if missing:  # a board that runs TFLite Micro cannot take it at all: refused before any training
        shippable = [p for p in TFLM_PRECISIONS if profile.supports(p)]
        raise ConfigError(f"Target {profile.name} has {missing}; evaluate {', '.join(shippable[:-1])} or "
                          f"{shippable[-1]} on {profile.name}.")
    say = progress or (lambda stage, message: None)
    set_threads(threads)
    torch.manual_seed(candidate.seed)
    np.random.seed(candidate.seed)
    seconds: dict[str, float] = {}

    @contextmanager
    def stage(name: str, message: str):
        say(name, message)
        started = time.perf_counter()
        yield
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started

    out_dir = paths.candidate(candidate, dataset, profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, info = None, {}
    if candidate.distills:
        epochs = candidate.budget.teacher_epochs
        path = teacher_path(dataset, candidate.seed, paths.teachers, epochs)
        with stage("teacher", f"{'loading the cached' if path.exists() else 'training the'} distillation teacher "
                              f"(width {TEACHER_WIDTH:g}, {epochs} epochs; trained once per dataset, seed and epochs)"):
            trained = 0
            for trained in train_teacher(dataset, candidate.seed, paths.teachers, epochs):
                say("teacher", f"epoch {trained}/{epochs}")
            teacher = load_teacher(dataset, path)
        scores = teacher_scores(teacher, dataset)
        say("teacher", f"validation accuracy {scores['accuracy']:.4f}, balanced {scores['balanced_accuracy']:.4f} "
                       "(measured on its fp32 torch model: the teacher is not shipped)"
            + (f"; no better than chance, 1/{dataset.num_classes}: distilling from it teaches nothing"
               if at_chance(scores["balanced_accuracy"], 1 / dataset.num_classes) else ""))
        info["teacher"] = "trained by this candidate" if trained else "cached"
        info["teacher_scores"] = {**scores, "epochs": epochs}

    # Training with a teacher is reported as "distill", so a stage table shows what distillation costs.
    with stage("distill" if teacher else "train", f"training width {candidate.width:g} for {candidate.budget.epochs} epochs"
               + (f", distilling at T={candidate.temperature:g}, alpha={candidate.alpha:g}" if teacher else "")):
        model = build_model(dataset.sample_shape, dataset.num_classes, candidate.width)
        fit(model, dataset, candidate.budget.epochs, teacher=teacher, temperature=candidate.temperature,
            alpha=candidate.alpha, seed=candidate.seed)
    dense_params = count_parameters(model)

    with stage("prune", f"{candidate.pruning} pruning to sparsity {candidate.sparsity:g}" if candidate.sparsity
               else "no pruning (sparsity 0)"):
        model, sparsity = prune_model(model, candidate, dataset, teacher)

    if candidate.precision == "int8-qat":
        with stage("quantize", "quantization-aware fine-tuning (int8 fake quantization)"):
            model = quantization_aware_finetune(model, candidate, dataset, teacher)

    dtype = input_dtype(candidate.precision)
    onnx_path = out_dir / "model.onnx"
    with stage("export", f"exporting ONNX ({candidate.precision})"):
        export_onnx(model, candidate, dataset, onnx_path)

    if profile.runtime == "tflite-micro":  # a microcontroller ships a .tflite, not a TVM build
        return _finish_tflm(model, candidate, dataset, profile, out_dir, onnx_path, stage, seconds,
                            root=paths.root, threads=threads, dense_params=dense_params, sparsity=sparsity, info=info)

    # Accuracy always runs the compiled artifact here, on the host; a local target is the host itself.
    trials = candidate.budget.tuning_trials
    host_target = host_build_target(profile, candidate.precision)
    with stage("compile", "compiling with TVM for this machine" + (f", tuning {trials} trials" if trials else "")):
        artifact = compile_tvm(
            onnx_path, host_target, out_dir / "model.so", (1, *dataset.sample_shape), dtype.name,
            tuning_trials=trials, cache_dir=paths.tuning, seed=candidate.seed,
        )
    if artifact.tuning_seconds:  # reported apart from compilation: tuning is the part records make free
        seconds["tune"] = artifact.tuning_seconds
        seconds["compile"] = max(0.0, seconds["compile"] - artifact.tuning_seconds)

    target = artifact
    if profile.backend != "local":
        with stage("compile", f"building for {profile.name}: what its backend times and its flash holds"):
            target = target_build(onnx_path, profile, artifact, out_dir, paths.tuning)
    backend = get_backend(profile, paths.root)
    sample = dataset.x_val[:1].astype(dtype)
    repeats = candidate.budget.timing_repeats
    session = ort_session(onnx_path, threads)
    with stage("measure", f"latency on {profile.name} ({backend.provenance})"):
        searched, metrics = measure_searched(backend, target, onnx_path, candidate.precision, sample, repeats,
                                             session=session, runtime=runtime)

    shipped_on = "onnxruntime session" if searched == "onnxruntime" else "compiled artifact"
    with stage("accuracy", f"accuracy of the {shipped_on} (validation and test splits)"):
        def on_tvm(x):
            return predict_tvm(artifact.library, x, dtype.name)

        def on_ort(x):
            return predict_onnx(session, x, dtype.name)

        on_ort_searched = searched == "onnxruntime"
        metrics.update(accuracy_metrics(on_ort if on_ort_searched else on_tvm, dataset))
        other = on_tvm if on_ort_searched else on_ort  # its test accuracy, which export verifies
        other_test = Metric(accuracy(other(dataset.x_test), dataset.y_test), "fraction", "measured")
        metrics["accuracy_test_onnxruntime"] = metrics["accuracy_test"] if on_ort_searched else other_test
        if on_ort_searched:
            metrics["accuracy_test_tvm"] = other_test

    metrics.update(memory_metrics(onnx_path, target.library, profile))
    metrics["sparsity"] = Metric(float(sparsity), "fraction", "measured")
    result = CandidateResult(
        candidate=candidate,
        dataset=dataset.name,
        target=profile.name,
        metrics=metrics,
        artifacts={"onnx": str(onnx_path), "library": artifact.library,
                   **({"target_library": target.library} if target is not artifact else {})},
        stage_seconds=seconds,
        versions=versions(),
        info={
            "provenance": backend.provenance,
            "dense_parameters": dense_params,
            "tuning": artifact.tuning(),
            "threads": threads,
            "limits": limits(profile),
            "host_cpu": host_cpu().summary(),  # where accuracy (always) and host latency were measured
            **({"searched_runtime": searched} if searched else {}),
            **info,
        },
    )
    (out_dir / "result.json").write_text(result.to_json())
    return result


def _finish_tflm(model, candidate: Candidate, dataset: Dataset, profile: TargetProfile, out_dir: Path,
                 onnx_path: Path, stage, seconds: dict, *, root: Path, threads: int, dense_params: int,
                 sparsity: float, info: dict) -> CandidateResult:
    """The rest of the pipeline for a TFLite Micro profile: convert, find the arena, emulate the latency from the
    graph, and measure accuracy by running the ``.tflite`` in the TFLM interpreter (what the board runs)."""
    from search.stages.tflite import arena_bytes, convert_tflite, predict_tflm

    kind = "fully integer int8" if candidate.precision.startswith("int8") else candidate.precision
    with stage("convert", f"converting to TFLite Micro ({kind})"):
        tflite_path = convert_tflite(model, candidate, dataset, out_dir / "model.tflite")
        arena = arena_bytes(tflite_path)
    dtype = input_dtype(candidate.precision)
    backend = get_backend(profile, root)
    with stage("measure", f"latency on {profile.name} ({backend.provenance})"):
        graph_only = CompiledArtifact("", dict(profile.tvm_target), (1, *dataset.sample_shape), dtype.name)
        metrics = dict(backend.measure(graph_only, tflite_path, candidate.precision, dataset.x_val[:1].astype(dtype),
                                       candidate.budget.timing_repeats))
    with stage("accuracy", "accuracy of the .tflite in the TFLite Micro interpreter (validation and test splits)"):
        metrics.update(accuracy_metrics(lambda x: predict_tflm(tflite_path, x), dataset))
        metrics["accuracy_test_onnxruntime"] = Metric(
            accuracy(predict_onnx(ort_session(onnx_path, threads), dataset.x_test, dtype.name), dataset.y_test),
            "fraction", "measured")
    metrics.update(tflm_memory_metrics(tflite_path, onnx_path, arena, profile))
    metrics["sparsity"] = Metric(float(sparsity), "fraction", "measured")
    result = CandidateResult(
        candidate=candidate, dataset=dataset.name, target=profile.name, metrics=metrics,
        artifacts={"onnx": str(onnx_path), "tflite": str(tflite_path)}, stage_seconds=seconds, versions=versions(),
        info={"provenance": backend.provenance, "dense_parameters": dense_params, "runtime": profile.runtime,
              "threads": threads, "limits": limits(profile), "host_cpu": host_cpu().summary(), **info},
    )
    (out_dir / "result.json").write_text(result.to_json())
    return result


def tflm_memory_metrics(tflite_path: Path, onnx_path: Path, arena: int, profile: TargetProfile) -> dict[str, Metric]:
    """RAM and flash of a TFLite Micro deployment: the arena the interpreter needed (measured) plus the profile's
    runtime overhead, and the flatbuffer (measured) plus the profile's figure for the runtime and its kernels. The
    ONNX graph's peak activations are left out: they count an int8 model's activations at float width."""
    from search.stages.tflite import constant_bytes

    model_bytes = file_bytes(tflite_path)
    runtime_ram, runtime_flash = profile.runtime_ram_overhead_bytes or 0, profile.runtime_flash_bytes or 0
    graph = graph_memory_metrics(onnx_path, profile)
    del graph["peak_activation_bytes"]
    return {
        **graph,
        # the weights as the .tflite holds them: int8-ptq and int8-qat of the same shapes take the same bytes
        "size_bytes": Metric(float(constant_bytes(tflite_path)), "bytes", "measured"),
        "tflite_bytes": Metric(float(model_bytes), "bytes", "measured"),
        "tflm_arena_bytes": Metric(float(arena), "bytes", "measured"),
        # a sum with a profile figure is an estimate, however exact its measured part
        "ram_bytes": Metric(float(arena + runtime_ram), "bytes", "measured" if not runtime_ram else "estimated"),
        "flash_bytes": Metric(float(model_bytes + runtime_flash), "bytes",
                              "measured" if not runtime_flash else "estimated"),
    }


def retime(result: CandidateResult, dataset: Dataset, profile: TargetProfile, runs_dir: Path, *,
           threads: int = 1) -> CandidateResult:
    """Time a finished candidate's artifact again; the caller makes sure no other work runs meanwhile.

    The figures timed during the search (beside other workers) stay as ``*_loaded``."""
    import dataclasses

    set_threads(threads)
    dtype = input_dtype(result.candidate.precision)
    library = result.artifacts.get("target_library", result.artifacts["library"])  # what the target loads
    artifact = CompiledArtifact(library, host_build_target(profile, result.candidate.precision)
                                if library == result.artifacts["library"] else profile.tvm_target,
                                (1, *dataset.sample_shape), dtype.name)
    onnx_path = Path(result.artifacts["onnx"])
    searched = result.info.get("searched_runtime", "tvm")  # the runtime it was searched on keeps it
    _, fresh = measure_searched(get_backend(profile, runs_dir), artifact, onnx_path, result.candidate.precision,
                                dataset.x_val[:1].astype(dtype), result.candidate.budget.timing_repeats,
                                session=ort_session(onnx_path, threads) if profile.backend == "local" else None,
                                runtime=searched)
    metrics = dict(result.metrics)
    for name in ("latency_ms_median", "latency_ms_p90"):
        metrics[f"{name}_loaded"] = result.metrics[name]
        metrics[name] = fresh[name]
    if "energy_mj" in fresh:
        metrics["energy_mj"] = fresh["energy_mj"]
    return dataclasses.replace(result, metrics=metrics, info={**result.info, "retimed": True})


def accuracy_metrics(predict: Callable[[np.ndarray], np.ndarray], dataset: Dataset) -> dict[str, Metric]:
    """Accuracy and balanced accuracy of one artifact on the validation and test splits, from one pass over each."""
    metrics = {}
    for suffix, x, y in (("", dataset.x_val, dataset.y_val), ("_test", dataset.x_test, dataset.y_test)):
        predictions = predict(x)
        metrics[f"accuracy{suffix}"] = Metric(accuracy(predictions, y), "fraction", "measured")
        metrics[f"balanced_accuracy{suffix}"] = Metric(balanced_accuracy(predictions, y), "fraction", "measured")
    return metrics


def baseline_accuracy(dataset: Dataset, paths: Paths, budget, seed: int, *, threads: int = 1) -> dict:
    """Validation accuracy of the fp32 full-width model (compiled artifact), trained once per dataset, budget
    and seed and cached: what an accuracy floor given as a relative drop is measured against."""
    import hashlib
    import json
    from dataclasses import asdict

    from filelock import FileLock

    from search.stages.train import code_version

    key = hashlib.sha256(json.dumps({"budget": asdict(budget), "seed": seed, "code": code_version()},
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = paths.root / "baselines" / f"{dataset.name}-{dataset.fingerprint}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.is_file():
            return {**json.loads(path.read_text()), "cached": True}
        result = evaluate_candidate(Candidate(budget=budget, seed=seed), dataset, load_profile("host"), paths,
                                    threads=threads)
        figures = {name: result.value(name) for name in ("accuracy", "accuracy_test", "balanced_accuracy",
                                                         "balanced_accuracy_test")}
        figures["candidate"] = result.candidate.key()
        path.write_text(json.dumps(figures))
    return {**figures, "cached": False}


def tuned_build_target(profile: TargetProfile) -> dict:
    """The target tuned and shipped code is built for: the host's, for the CPU detected here (``mcpu``).
    Untuned code stays generic, where ``mcpu`` measured slower (NOTES.md); tuned code is what the CPU ran fastest."""
    import tvm

    return {**_machine_profile(profile).tvm_target, "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


def ship_candidate(result: CandidateResult, dataset: Dataset, profile: TargetProfile, paths: Paths, *,
                   trials_per_task: int, runtime: str = "auto", threads: int = 1,
                   tuning_seconds: float | None = None) -> dict:
    """The shipping stage of one trained candidate on a local target: tune it for this CPU (``trials_per_task`` for
    every task; records shared per target), then time the untuned and tuned TVM libraries and onnxruntime in turns,
    same graph and threads, and keep the fastest (or the forced ``runtime``). Accuracy is measured again on
    the artifact that ships when it is not the one the search measured. ``tuning_seconds`` caps the tuning: tasks not
    started by then keep TVM's default loops, and the tuned library is timed as it is; past it (0 s), the build
    applies the records other candidates tuned for the same tasks, and is left out where there are none."""
    set_threads(threads)
    dtype = input_dtype(result.candidate.precision)
    shape, onnx_path = (1, *dataset.sample_shape), Path(result.artifacts["onnx"])
    sample, repeats = dataset.x_val[:1].astype(dtype), result.candidate.budget.timing_repeats
    untuned_target = host_build_target(profile, result.candidate.precision)
    options: dict[str, dict] = {"tvm": {"library": result.artifacts["library"], "target": untuned_target,
                                        "tuned": False}}
    tuning = None
    if trials_per_task > 0:
        stop_at = None if tuning_seconds is None else time.perf_counter() + tuning_seconds
        tuned = compile_tvm(onnx_path, tuned_build_target(profile), onnx_path.with_name("model_tuned.so"), shape,
                            dtype.name, trials_per_task=trials_per_task, stop_tuning_at=stop_at, cache_dir=paths.tuning,
                            seed=result.candidate.seed)
        tuning = {**tuned.tuning(), "trials_per_task": trials_per_task}
        if tuned.tasks_tuned + tuned.tasks_reused:  # past the cap with no record of its tasks, nothing was tuned
            options["tvm-tuned"] = {"library": tuned.library, "target": tuned.target, "tuned": True}
    session = ort_session(onnx_path, threads)
    options["onnxruntime"] = {"library": None, "target": None, "tuned": False}
    timers = {k: tvm_timer(o["library"], sample, dtype.name) for k, o in options.items() if o["library"]}
    timers["onnxruntime"] = onnxruntime_timer(session, sample)
    # in turns, once every option is built: timed minutes apart (before and after tuning), a VM's changing speed
    # could decide between two options within a few percent of each other. The runtime the search timed (untuned
    # TVM or onnxruntime) read much slower now: the timing was disturbed, and it is repeated (the least disturbed kept)
    searched_runtime = result.info.get("searched_runtime", "tvm")
    searched = result.value("latency_ms_median")
    timed_all, untuned_ms = least_disturbed(lambda: time_in_turns(timers, repeats),
                                            lambda t: t[searched_runtime].median_ms, searched)
    for key, timed in timed_all.items():
        options[key]["metrics"] = add_work_and_energy(latency_metrics(timed.seconds_per_call, "measured"), onnx_path,
                                                      result.candidate.precision, profile, timed.energy_mj)
    allowed = [k for k in options if runtime == "auto" or k.split("-")[0] == runtime]
    chosen = min(allowed, key=lambda k: options[k]["metrics"]["latency_ms_p90"].value)
    ship = options[chosen]
    metrics = {n: ship["metrics"][n] for n in ("latency_ms_median", "latency_ms_p90", "energy_mj")}
    if chosen != searched_runtime:  # the search measured its runtime's accuracy; another artifact's is measured anew
        predict, model = (predict_onnx, session) if chosen == "onnxruntime" else (predict_tvm, ship["library"])
        metrics.update(accuracy_metrics(lambda x: predict(model, x, dtype.name), dataset))
    return {
        "runtime": chosen.split("-")[0], "option": chosen, "library": ship["library"], "target": ship["target"],
        "forced": runtime != "auto", "tuning": tuning, "host_cpu": host_cpu().summary(),
        # how many times the runtimes were timed, and the searched runtime's median then against the search's
        "timing": {"attempts": len(untuned_ms), "untuned_against_search": min(untuned_ms) / searched,
                   "first_against_search": untuned_ms[0] / searched},
        "metrics": {n: [m.value, m.unit, m.provenance] for n, m in metrics.items()},
        "figures": {k: {n: o["metrics"][n].value for n in ("latency_ms_median", "latency_ms_p90")}
                    for k, o in options.items()},
    }
