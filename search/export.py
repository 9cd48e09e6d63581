"""Export a finished search's winner: the measured ONNX, a TVM library for the target, a model card.

The export verifies itself: the shipped ONNX and a host build of the same graph
are run on the test split and must reproduce the recorded accuracies exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import shlex
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from hardware_targets.calibration import emulator_for
from objectives.pareto import ACCURACY_METRICS
from search.errors import ConfigError, EdgeSearchError
from search.study import (
    EMULATOR_ATTR, Row, best_within_budget, check_same_data, feasible_front, load_study, rows, stored_spec,
    trial_artifact,
)

EXPORT_TIMING_REPEATS = 30
INT8_FASTER = 1.1  # below this speed-up over fp32 (10%, about the timing noise of a loaded machine) int8 is "not faster"
ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}


class VerificationError(EdgeSearchError, RuntimeError):
    """The exported artifacts do not reproduce the recorded figures."""


def _not_reproduced(what: str, figures: list[tuple[str, float, float]]) -> VerificationError:
    """The figures that differ from the recorded ones, in a sentence with what usually makes them differ."""
    differ = "; ".join(f"{name} {got:.4g} (recorded {recorded:.4g})" for name, got, recorded in figures
                       if got != recorded)
    return VerificationError(f"{what} does not reproduce the search's figures: {differ}. The dataset is not the one "
                             "the search ran on, the trial's files changed since, or a runtime's version did (each "
                             "trial records them); nothing was exported.")


@dataclass(frozen=True)
class Pick:
    trial: int | None = None
    min_accuracy: float | None = None  # fastest feasible candidate at or above this accuracy
    force: bool = False

    def __post_init__(self):
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:  # NaN too
            raise ConfigError(f"The accuracy to reach (--pick fastest-above-accuracy) must be between 0 and 1, e.g. "
                              f"0.95. Got {self.min_accuracy} instead.")


def _anyway(trained: list[Row], budget_ms: float) -> str:
    """How to ship a trained candidate that misses a limit, as the user may for a demo or a looser device: the
    most accurate within the latency budget, else the fastest."""
    if not trained:
        return ""
    within = [r for r in trained if r.value("latency_ms_p90") <= budget_ms]
    row = max(within, key=lambda r: r.quality) if within else min(trained, key=lambda r: r.value("latency_ms_p90"))
    which = "most accurate within the budget" if within else "fastest trained"
    return (f" To export one anyway: --trial {row.number} --force (the {which}: {ACCURACY_METRICS[row.objective]} "
            f"{row.quality:.4f}, {row.value('latency_ms_p90'):.4g} ms p90).")


def choose(all_rows: list[Row], pick: Pick, budget_ms: float) -> tuple[Row, str]:
    """The row to export and a sentence saying why; clear errors when there is none."""
    front = feasible_front(all_rows)
    if pick.trial is not None:
        match = [r for r in all_rows if r.number == pick.trial]
        if not match:
            raise ConfigError(f"Trial {pick.trial} is not a trial of this search.")
        row = match[0]
        if row.stopped == "screened":
            raise ConfigError(f"Trial {pick.trial} was screened out before training ({row.error}): it has no model "
                              "to export.")
        if row.state != "COMPLETE":
            said = {"FAIL": f"failed ({row.error})", "RUNNING": "still running"}.get(row.state, row.state.lower())
            raise ConfigError(f"Trial {pick.trial} is not a finished trial of this search: it {said}.")
        if row not in front:
            missed = (row.infeasible_because() or "infeasible" if not row.feasible else
                      f"the same knobs as trial {row.reused_from}, whose result it reuses"
                      if row.reused_from is not None else "feasible but dominated")
            if not pick.force:
                raise ConfigError(f"Trial {pick.trial} is not on the feasible Pareto front ({missed}; front: "
                                  f"{sorted(r.number for r in front)}); pass --force to export it anyway.")
            return row, f"candidate picked by hand with --trial and --force, {missed} (not on the feasible front)"
        return row, "candidate picked by hand with --trial (on the feasible front)"
    feasible = [r for r in all_rows if r.feasible]
    if not feasible:
        timed = [r for r in all_rows if "latency_ms_p90" in r.metrics and r.reused_from is None]
        if not timed:
            raise ConfigError("The search has no finished candidate to export.")
        closest = min(timed, key=lambda r: r.value("latency_ms_p90"))
        p90, over = closest.value("latency_ms_p90"), closest.value("latency_ms_p90") - budget_ms
        how = " (screened out before training)" if closest.stopped == "screened" else ""
        message = (f"No candidate is feasible. The closest, trial {closest.number}{how}, takes {p90:.4g} ms (p90) "
                   f"against the {budget_ms:g} ms budget")
        why = closest.infeasible_because() or "infeasible"
        message += (f", over by {over:.4g} ms." if over > 0 else
                    f", but is {why}; the search's last lines say what its candidates missed.")
        raise ConfigError(message + _anyway([r for r in timed if r.stopped != "screened"], budget_ms))
    words = ACCURACY_METRICS[feasible[0].objective]  # the search's accuracy metric
    if pick.min_accuracy is not None:
        good = [r for r in feasible if r.quality >= pick.min_accuracy]
        if not good:
            top = max(feasible, key=lambda r: r.quality)
            raise ConfigError(f"No feasible candidate reaches {words} {pick.min_accuracy:g}; the best is trial "
                              f"{top.number} at {top.quality:.4f} (short by {pick.min_accuracy - top.quality:.4f}).")
        row = min(good, key=lambda r: (r.value("latency_ms_p90"), r.value("size_bytes")))
        return row, f"fastest feasible candidate with validation {words} >= {pick.min_accuracy:g}"
    if words == "accuracy":
        return best_within_budget(all_rows), "most accurate feasible candidate within the latency budget"
    return best_within_budget(all_rows), f"feasible candidate of the highest {words} within the latency budget"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def elf_machines(path: Path) -> set[str]:
    """Architectures of an ELF shared object, or of the objects inside a .tar."""
    import tarfile

    def machine(data: bytes) -> str:
        if data[:4] != b"\x7fELF":
            return "not-elf"
        order = "little" if data[5] == 1 else "big"
        return ELF_MACHINES.get(int.from_bytes(data[18:20], order), "unknown")

    if str(path).endswith(".tar"):
        with tarfile.open(path) as tar:
            return {machine(tar.extractfile(m).read(64)) for m in tar.getmembers() if m.isfile()}
    return {machine(Path(path).read_bytes()[:64])}


def expected_machine(tvm_target: dict) -> str:
    triple = tvm_target.get("mtriple", "")
    if triple.startswith("aarch64"):
        return "aarch64"
    if triple.startswith(("thumb", "arm")):
        return "arm"
    if triple.startswith("riscv"):
        return "riscv"
    return "x86_64"


def _make_reproducible(tar_path: Path) -> None:
    """Re-pack a tar with fixed times, owners and order, so two exports hash the same."""
    import io
    import tarfile

    with tarfile.open(tar_path) as tar:
        members = sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile())
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            tar.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _removed_on_failure(out: Path, existed: bool):
    """An export that fails (its verification, a Ctrl-C) leaves no half-written folder that looks deployable: what it
    wrote goes, and the folder too if the export made it."""
    try:
        yield
    except BaseException:
        if existed:
            for path in out.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise


def prepare_dir(out: Path, overwrite: bool) -> Path:
    """``out`` resolved and empty: refused if it holds anything, unless ``overwrite``."""
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ConfigError(f"Export directory {out} exists and is not empty; pass --overwrite to replace it.")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _mlflow_run_id(tracking_uri: str | None, search: str, trial: int, parent: str | None) -> str | None:
    """The trial's run under the search's own run: an experiment may hold an older search's runs of that name."""
    if not tracking_uri or not parent:
        return None
    from mlflow.tracking import MlflowClient

    from search.tracking import search_experiment

    client = MlflowClient(tracking_uri)
    exp = search_experiment(client, search, parent)
    if exp is None or exp.lifecycle_stage == "deleted":  # deleted in MLflow: the card is not logged to its runs
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`edgesearch.trial` = '{trial}' and "
                              f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1)
    return runs[0].info.run_id if runs else None


PREDICT_PY = '''"""Classify inputs with the exported model, in the runtime the model card ships it with.

python predict.py [input.npy] [--runtime onnxruntime|tvm]. input.npy holds one sample or a batch of them, in the
axis order the model card's input layout names (a single channel's axis may be left out), or in the channels-last
order the searched dataset was saved in (its dataset_layout). A model of signals also takes a window as a .csv
(a line per sample, a column per channel), and one trained on a folder of images packed by edgesearch pack an image
file (it needs Pillow), each read as edgesearch pack reads them. TVM runs model.so, or
model.tar on the board it was built for (linked there on first use: TVM needs a C compiler for that); elsewhere,
and with model.onnx or model.onnx.gz alone, onnxruntime runs the same graph.
"""
import argparse
import gzip
import json
import platform
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = ()
read_window = None
here = Path(__file__).resolve().parent
card = json.loads((here / "model_card.json").read_text()) if (here / "model_card.json").is_file() else {}
library = next((here / name for name in ("model.so", "model.tar") if (here / name).is_file()), None)
built_for = (card.get("verification") or {}).get("library_architecture") or []
machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
machine = "arm" if machine.startswith("armv") else machine
runs_here = library is not None and (not built_for or machine in built_for)
shipped = "tvm" if card.get("runtime") == "tvm" and runs_here else "onnxruntime"
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
values = (card.get("input") or {}).get("values")
parser.add_argument("input", nargs="?", help=".npy file of one sample or a batch (N, ...) (zeros if left out)"
                    + ("; or an image file" if (card.get("input") or {}).get("image_files") else "")
                    + ("; or a window as a .csv, a line per sample" if len((card.get("input") or {}).get("shape")
                                                                          or ()) == 3 else "")
                    + (f"; its values as in training: {values}".replace("%", "%%") if values else ""))
parser.add_argument("--input", dest="named_input", metavar="INPUT", help="the same, named")
parser.add_argument("--runtime", choices=["onnxruntime", "tvm"], default=shipped, help=f"[default: {shipped}]")
args = parser.parse_args()
if args.input and args.named_input:
    parser.error("give the input once, as an argument or as --input")
args.input = args.input or args.named_input
if card.get("runtime") == "tvm" and library is not None and not runs_here and args.runtime == "onnxruntime":
    print(f"note: {library.name} is {', '.join(built_for)} code and this machine is {machine}; onnxruntime runs "
          "the same graph here", file=sys.stderr)

if args.runtime == "tvm":
    if library is None:
        parser.error("no model.so or model.tar beside predict.py: send it too, or use --runtime onnxruntime")
    if not runs_here:
        parser.error(f"{library.name} is {', '.join(built_for)} code and this machine is {machine}: run it on "
                     "its board, or use --runtime onnxruntime here")
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    shape, dtype = card["input"]["shape"], np.dtype(card["input"]["dtype"])
    run = lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()
else:
    import onnxruntime as ort

    # the model file as exported, or its gzip-compressed copy (what a device may have been sent), unpacked in memory
    model = here / "model.onnx"
    model = str(model) if model.is_file() else gzip.decompress((here / "model.onnx.gz").read_bytes())
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    dtype = np.dtype(np.float16 if "float16" in inp.type else np.float32)
    run = lambda x: session.run(None, {inp.name: x})[0]
sample = tuple(shape[1:])
signals = len(sample) == 2  # (channels, samples in time)
path = Path(args.input) if args.input else None
if path is not None and not path.is_file():
    parser.error(f"{args.input} " + ("is a folder: pass one file" if path.is_dir() else "does not exist"))
if path is not None and path.suffix.lower() in IMAGE_SUFFIXES:
    if not (card.get("input") or {}).get("image_files"):
        parser.error(f"{args.input} is an image file, and this model was not trained on images packed from files: "
                     f"pass a .npy of its input ({(card.get('input') or {}).get('values', 'as in training')})")
    try:
        from PIL import Image, ImageOps
    except ImportError:
        parser.error("reading an image file needs Pillow: pip install pillow (or pass a .npy)")
    channels, height, width = sample
    with Image.open(args.input) as image:  # as edgesearch pack read the training images
        image = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    x = (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))[None]
elif path is not None and path.suffix.lower() == ".csv":
    if not signals:
        parser.error(f"{args.input} is a CSV file, and this model takes images of shape {sample}: pass a .npy")
    try:
        window = read_window(path.read_text(encoding="utf-8", errors="replace"))[0]
    except ValueError as exc:
        parser.error(f"{args.input} {exc}")
    if window.shape != sample[::-1]:
        parser.error(f"{args.input} is a window of {window.shape[0]} samples x {window.shape[1]} channel(s); the "
                     f"model takes windows of {sample[1]} samples x {sample[0]} channel(s), one line per sample")
    x = window.T[None]  # a line per sample in the file; the model takes the channels first
else:
    try:
        x = np.load(path, allow_pickle=False) if path else np.zeros(shape, dtype)
    except (OSError, ValueError) as exc:
        parser.error(f"{args.input} is not a .npy array ({exc}): save the input with numpy.save(file, array)"
                     + (", or pass a window as a .csv" if signals else ""))
if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
    parser.error(f"{args.input} holds " + ("a missing, non-numeric or infinite value" if np.issubdtype(
                 x.dtype, np.number) else f"{x.dtype} values") + ": the model takes numbers, as in training")
if x.shape == sample:
    x = x[None]
elif sample[0] == 1 and x.shape == sample[1:]:  # one channel: its axis may be left out, as edgesearch reads data
    x = x[None, None]
elif sample[0] == 1 and x.shape[1:] == sample[1:]:
    x = x[:, None]
elif (card.get("input") or {}).get("dataset_layout") and x.shape[-len(sample):] == (*sample[1:], sample[0]):
    x = np.moveaxis(x if x.ndim > len(sample) else x[None], -1, 1)  # channels-last, as the dataset was saved
if x.shape[1:] != sample:
    layout = (card.get("input") or {}).get("layout", "channel-first")
    order = (f"; if its axes are in another order, np.moveaxis them to {layout}"
             if sorted(x.shape[-len(sample):]) == sorted(sample) else "")
    parser.error(f"{args.input} holds an array of shape {x.shape}; the model takes samples of shape {sample} "
                 f"({layout}), one sample or a batch (N, {', '.join(map(str, sample))}){order}")
names = card.get("class_names") or []  # the dataset's names of the labels, where it gave them
for i, one in enumerate(x.astype(dtype)):  # one at a time: the model is built for batch 1, as on the device
    logits = run(np.ascontiguousarray(one[None]))
    best = int(np.argmax(logits))
    print(*(["sample", i] if len(x) > 1 else []), "class", best, *([f"({names[best]})"] if names else []), "logits",
          np.round(logits.astype(np.float64).ravel(), 3).tolist(), f"({args.runtime})")
'''


def predict_py() -> str:
    """predict.py, reading the image files and CSV windows ``edgesearch pack`` reads, with pack's own reader of a
    window: the script runs where edgesearch is not installed."""
    import inspect

    from search.pack import IMAGE_SUFFIXES, read_window

    return (PREDICT_PY.replace("IMAGE_SUFFIXES = ()", f"IMAGE_SUFFIXES = {tuple(sorted(IMAGE_SUFFIXES))!r}", 1)
            .replace("read_window = None\n", f"\n\n{inspect.getsource(read_window)}\n\n", 1))


def export_search(
    search: str, out: Path, *, storage_url: str, runs_dir: Path, pick: Pick = Pick(), target: str | None = None,
    tracking_uri: str | None = None, overwrite: bool = False, register: bool = True, dataset: str | None = None,
) -> dict:
    """Export a search's chosen candidate to ``out``; returns the model card. ``dataset`` names the search's data
    where it is now (another machine); it must hold what the search trained on."""
    from hardware_targets import get_backend, load_profile, same_profile
    from hardware_targets.compile import compile_tvm, tuning_dir
    from objectives.accuracy import accuracy, predict_onnx, predict_tvm
    from search.pipeline import host_build_target
    from search.stages.export import input_dtype, ort_session

    study = load_study(search, storage_url)
    spec = stored_spec(study, runs_dir)
    if dataset:
        spec = replace(spec, dataset=str(dataset))
    all_rows = rows(study)
    row, reason = choose(all_rows, pick, spec.latency_budget_ms)
    if tracking_uri:  # the exported trial's MLflow run is looked up and registered: catch up after an outage first
        from search.tracking import check_tracking, sync_search

        check_tracking(tracking_uri, " (or --no-mlflow: export without registering the model)", runs_dir)

        with contextlib.suppress(EdgeSearchError):  # a running search is logged by its own driver
            sync_search(study, spec, tracking_uri, Path(runs_dir))
    trial = study.trials[row.number]
    onnx_src = trial_artifact(trial, "onnx", runs_dir)
    if not onnx_src.is_file():
        raise ConfigError(f"The measured ONNX of trial {row.number} is gone ({onnx_src}, and not under "
                          f"{Path(runs_dir).resolve()}/ either); re-run the search.")
    searched_on = load_profile(spec.target)
    profile = load_profile(target) if target else searched_on
    precision = row.knobs["precision"]
    missing = profile.unsupported_reason(precision)
    if missing:  # before anything is written: nothing to clean up
        raise ConfigError(f"Trial {row.number} ({reason}) is {precision}, and target {profile.name} has "
                          f"{missing}. Export a trial of a precision {profile.name} runs "
                          f"(--trial N; `edgesearch status {search}` lists them), or search on {profile.name} itself.")
    get_backend(profile).check("nothing was exported")  # a board down, a cross compiler missing: before building
    dataset = _searched_dataset(spec, search)
    check_same_data(study, spec, dataset, "export from it")
    same_target = same_profile(profile, searched_on)  # a profile file read from where it is now counts as one
    board_figures = None
    if "tflite-micro" in (profile.runtime, searched_on.runtime) and not same_target:
        if profile.runtime != searched_on.runtime:
            raise ConfigError(f"Search {search!r} ran on {searched_on.name} ({searched_on.runtime}); "
                              f"{profile.name} runs {profile.runtime}. Search on {profile.name} itself, then export.")
        board_figures = _on_another_board(trial, row, dataset, profile, runs_dir)
    # which factors emulated the figures: the search's for its own board, those under runs_dir now for another one
    now = emulator_for(profile, runs_dir).words if profile.backend == "emulated" else None
    emulator = study.user_attrs.get(EMULATOR_ATTR) if now and same_target else now
    emulator_now = now if emulator else None  # a study stored without the words: nothing to compare with
    # the board as the user named it (a profile file of their own by its path): the command a card gives must run
    calibrate_with = f"edgesearch calibrate --target {shlex.quote(target or spec.target)} --measured FILE" \
        if emulator else None
    existed = Path(out).resolve().exists()
    out = prepare_dir(out, overwrite)
    with _removed_on_failure(out, existed):
        dtype = input_dtype(precision).name
        shape = (1, *dataset.sample_shape)

        onnx_path = out / "model.onnx"
        shutil.copyfile(onnx_src, onnx_path)  # the exact graph that was measured
        searched_runtime = searched_on.runtime
        if "tflite-micro" in (profile.runtime, searched_runtime):
            card = {**_card_head(search, study, spec, row, trial, reason, profile, searched_on, tracking_uri,
                                 dataset, searched=() if board_figures else MOVED_FIGURES, emulator=emulator,
                                 emulator_now=emulator_now, calibrate_with=calibrate_with),
                    **_ship_tflm(trial, row, out, dataset, profile, runs_dir)}
            card["metrics"].update(board_figures or {})
            stored = _stored_bytes([out / "model.tflite"], copies=False)  # flashed as is: a copy would save nothing
            card["metrics"].update(stored["metrics"])
            card["gzip_copies"] = stored["gzip_copies"]
            return _write_card(card, out, search, tracking_uri, register)
        # what the search's shipping stage measured ships: its TVM target (tuned for this CPU, same records) and runtime
        shipped = row.shipped if same_target else None
        build_target = (shipped.get("target") if shipped else None) or (
            host_build_target(profile, precision) if profile.backend == "local" else profile.tvm_target)
        # without a shipping stage, what the search timed ships: on a local target the faster of untuned TVM and
        # onnxruntime
        runtime = shipped["runtime"] if shipped else (
            trial.user_attrs.get("searched_runtime", "tvm") if same_target else "tvm")
        cross = "mtriple" in build_target
        library = out / ("model.tar" if cross else "model.so")
        tuning_cache = Path(runs_dir) / "tuning"
        artifact = compile_tvm(onnx_path, build_target, library, shape, dtype, cache_dir=tuning_cache)
        if cross:
            _make_reproducible(library)
        machines = elf_machines(library)
        if machines != {expected_machine(build_target)}:
            raise VerificationError(f"{library.name} holds {sorted(machines)} code, but target {profile.name} needs "
                                    f"{expected_machine(build_target)}.")
        # Timed before the verification below runs TVM: the runtime's thread pool reads its size once per process.
        # Another target than the search's is measured (or emulated) here: its figures replace the search's.
        remeasured = _remeasure(artifact, onnx_path, precision, dataset.x_val[:1].astype(dtype), profile,
                                runtime, suffix="_at_export" if same_target else "", runs_dir=runs_dir,
                                reference_ms=row.value("latency_ms_median") if same_target else None) \
            if profile.backend == "local" or (not same_target and profile.backend == "emulated") else {}
        if precision.startswith("int8") and profile.backend == "local":
            int8_vs_fp32 = _int8_against_fp32(row, spec, dataset, profile, build_target, runtime,
                                              (artifact.library, onnx_path), tuning_cache)
        else:
            int8_vs_fp32 = None
        records = tuning_dir(tuning_cache, build_target)
        record_file = records / "database_tuning_record.json"
        if record_file.is_file() and record_file.stat().st_size:
            (out / "tuning_records").mkdir()  # only where there are records: an untuned build has none to ship
            for name in ("database_workload.json", "database_tuning_record.json"):
                shutil.copyfile(records / name, out / "tuning_records" / name)
        (out / "predict.py").write_text(predict_py())

        # Verification: the shipped ONNX and a host build must reproduce the recorded test accuracies exactly.
        # What the TVM build scored: its own figure where a TVM build ships; else, beside onnxruntime's as its own,
        # the search's TVM figure (searched on onnxruntime, or on TVM before the shipping stage chose onnxruntime)
        if shipped and shipped["option"] != "onnxruntime":
            tvm_key = "accuracy_test"
        else:
            tvm_key = "accuracy_test_tvm" if "accuracy_test_tvm" in row.metrics else (
                "accuracy_test_search" if shipped else "accuracy_test")
        recorded_tvm, recorded_ort = row.value(tvm_key), row.value("accuracy_test_onnxruntime")
        predicted_ort = predict_onnx(ort_session(onnx_path), dataset.x_test, dtype)
        got_ort = accuracy(predicted_ort, dataset.y_test)
        host_lib = library if not cross else out / ".verify_host.so"
        if cross:
            compile_tvm(onnx_path, host_build_target(profile, precision), host_lib, shape, dtype,
                        cache_dir=tuning_cache)
        predicted_tvm = predict_tvm(str(host_lib), dataset.x_test, dtype)
        got_tvm = accuracy(predicted_tvm, dataset.y_test)
        if cross:
            host_lib.unlink()
        verification = {"onnxruntime_test_accuracy": got_ort, "recorded_onnxruntime_test_accuracy": recorded_ort,
                        "tvm_host_test_accuracy": got_tvm, "recorded_tvm_test_accuracy": recorded_tvm,
                        "library_architecture": sorted(machines)}
        if got_ort != recorded_ort or got_tvm != recorded_tvm:
            raise _not_reproduced("The exported model", [("test accuracy in onnxruntime", got_ort, recorded_ort),
                                                         ("test accuracy in TVM", got_tvm, recorded_tvm)])

        card = _card_head(search, study, spec, row, trial, reason, profile, searched_on, tracking_uri, dataset,
                          searched=("latency_ms_median", "latency_ms_p90", "energy_mj") if same_target else (),
                          emulator=emulator, emulator_now=emulator_now, calibrate_with=calibrate_with)
        stored = _stored_bytes([onnx_path, library], copies=True)
        card["metrics"].update({**remeasured, **stored["metrics"]})
        card.update({
            "gzip_copies": stored["gzip_copies"],
            "runtime": runtime, "tvm_target": build_target,
            # every runtime the shipping stage timed side by side (p90 and median ms); the fastest ships unless forced
            "runtime_figures": shipped["figures"] if shipped else None,
            "runtime_forced": bool(shipped and shipped.get("forced")),
            "input": model_input(dataset, dtype),
            "verification": verification,
            "int8_against_fp32": int8_vs_fp32,
            "per_class_test": _per_class(predicted_ort if runtime == "onnxruntime" else predicted_tvm, dataset,
                                         "onnxruntime" if runtime == "onnxruntime" else "TVM host build"),
        })
        return _write_card(card, out, search, tracking_uri, register)


STORED_KINDS = {".onnx": "onnx", ".so": "library", ".tar": "library", ".tflite": "tflite"}


def _stored_bytes(model_files: list[Path], copies: bool) -> dict:
    """Each shipped model file's bytes as stored and gzip-compressed and, with ``copies``, its compressed copy beside
    it (``model.onnx.gz``) to send to a device: the runtimes hold weights dense, so compression is where unstructured
    zeros show. The card's ``gzip_copies`` names them."""
    from objectives.size import file_bytes, gzipped

    metrics, written = {}, {}
    for model_file in model_files:
        packed = gzipped(model_file)
        if copies:
            written[model_file.name] = model_file.name + ".gz"
            model_file.with_name(written[model_file.name]).write_bytes(packed)
        kind = STORED_KINDS[model_file.suffix]
        metrics[f"{kind}_file_bytes"] = {"value": float(file_bytes(model_file)), "unit": "bytes",
                                         "provenance": "measured"}
        metrics[f"{kind}_gzip_bytes"] = {"value": float(len(packed)), "unit": "bytes", "provenance": "measured"}
    return {"metrics": metrics, "gzip_copies": written}


def _card_head(search, study, spec, row, trial, reason, profile, searched_on, tracking_uri, dataset,
               searched=("latency_ms_median", "latency_ms_p90", "energy_mj"), emulator: str | None = None,
               emulator_now: str | None = None, calibrate_with: str | None = None) -> dict:
    """What every model card says: which candidate, why, from which search, its knobs and its recorded figures."""
    from hardware_targets.host import host_cpu
    from search.pipeline import versions

    def fig(name):
        value, unit, provenance = row.metrics[name]
        return {"value": value, "unit": unit, "provenance": provenance}

    names = ("accuracy", "accuracy_test", "balanced_accuracy", "balanced_accuracy_test", "accuracy_test_onnxruntime",
             *searched, "size_bytes", "flash_bytes",
             "tflite_bytes", "tflm_arena_bytes", "peak_activation_bytes", "ram_bytes")
    parent = study.user_attrs.get("mlflow_parent_run_id")
    return {
        "search": search, "trial": row.number, "why": reason,
        "mlflow_run_id": _mlflow_run_id(tracking_uri, search, row.number, parent),
        "mlflow_search_run_id": parent,
        "accuracy_floor": (study.user_attrs.get("accuracy_floor") or {}).get("value"),
        "dataset": spec.dataset,
        # its splits as the search read them, and which were drawn here rather than given by the data
        "dataset_splits": dataset.summary(),
        **({"class_names": list(dataset.class_names)} if dataset.class_names else {}),
        "target_profile": profile.name, "measured_on": searched_on.name,
        **({"emulator": emulator, "calibrate_with": calibrate_with} if emulator else {}),
        # the board calibrated since the search: its figures stay the search's, and the card says so
        **({"emulator_since": f"{profile.name} is emulated with {emulator_now} under this runs folder now; the "
                              "figures here are the search's (a new search on the board emulates with it)"}
           if emulator_now != emulator else {}),
        # the CPU the search's host figures (accuracy always, latency for host targets) were measured on, and this one
        "measured_on_cpu": trial.user_attrs.get("host_cpu"), "exported_on_cpu": host_cpu().summary(),
        "knobs": row.knobs,
        "metrics": {n: fig(n) for n in names if n in row.metrics},
        "latency_budget_ms": spec.latency_budget_ms,
        "search_unfinished": unfinished(study, spec),
        "versions": versions(),
    }


def unfinished(study, spec) -> str | None:
    """Why the search's winner may still change, or None for a search that ended: a model exported before then says
    so (an export is allowed at any time; a user may want an interim model)."""
    from search.study import search_state

    state, detail = search_state(study, spec)
    if state == "running":
        return f"the search was still running ({detail})"
    if state == "stopped":
        return f"the search had stopped {detail}"
    return None


def _write_card(card: dict, out: Path, search: str, tracking_uri: str | None, register: bool) -> dict:
    p90 = card["metrics"].get("latency_ms_p90")
    if card["target_profile"] != card["measured_on"] and p90 and p90["value"] > card["latency_budget_ms"]:
        # exported for another target than the search's: its figures there may miss the budget the search kept
        card["over_budget_on_target"] = (f"p90 {p90['value']:.4g} ms on {card['target_profile']} "
                                         f"({p90['provenance']}), over the search's budget of "
                                         f"{card['latency_budget_ms']:g} ms")
    card["artifacts"] = {p.relative_to(out).as_posix(): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    (out / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    (out / "MODEL_CARD.md").write_text(model_card_markdown(card))
    if register and tracking_uri:
        card["registered_version"] = _register(tracking_uri, search, card["mlflow_run_id"], out, card)
        (out / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
        if card["mlflow_artifact_path"]:  # the version's source: the folder as written, card included
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri).log_artifacts(card["mlflow_run_id"], str(out), card["mlflow_artifact_path"])
    return card


MAIN_CC = """// A minimal TensorFlow Lite Micro program for the exported model (a sketch: wire the input to your sensor).
// Build it with TFLM (github.com/tensorflow/tflite-micro) and, for speed, {kernels}.
#include <cmath>
#include <cstdint>

#include "model_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

// What the TFLM interpreter needed for this model on the host, measured at export ({arena} bytes), rounded up to
// 16; add the runtime's own bookkeeping if your port allocates it from the same arena.
constexpr int kTensorArenaSize = {arena_aligned};
alignas(16) static uint8_t tensor_arena[kTensorArenaSize];

// One input of the model: {input_note}.
// Its values as in training: {input_values}.
constexpr int kInputLength = {input_length};

{quantize_input}{class_names}// The interpreter, set up once, at the first call, as TFLM's examples do in
// setup(): the operators registered and the arena allocated. Null if the arena cannot hold the model.
static tflite::MicroInterpreter* Interpreter() {{
  static tflite::MicroMutableOpResolver<{op_count}> resolver;
  static tflite::MicroInterpreter* const interpreter = []() -> tflite::MicroInterpreter* {{
{registrations}
    static tflite::MicroInterpreter it(tflite::GetModel(g_model), resolver, tensor_arena, kTensorArenaSize);
    return it.AllocateTensors() == kTfLiteOk ? &it : nullptr;
  }}();
  return interpreter;
}}

// The class of one input, or -1 if the interpreter fails, -2 if input_len is not kInputLength.
int classify(const {input_c_type}* input, int input_len) {{
  if (input_len != kInputLength) return -2;
  tflite::MicroInterpreter* interpreter = Interpreter();
  if (interpreter == nullptr) return -1;
  TfLiteTensor* in = interpreter->input(0);
  for (int i = 0; i < kInputLength; ++i) in->data.{input_field}[i] = input[i];
  if (interpreter->Invoke() != kTfLiteOk) return -1;
  TfLiteTensor* out = interpreter->output(0);
  int best = 0;
  for (int i = 1; i < out->dims->data[out->dims->size - 1]; ++i)
    if (out->data.{output_field}[i] > out->data.{output_field}[best]) best = i;
  return best;
}}

#ifdef EDGESEARCH_SELF_TEST
#include "self_test_data.h"

// A check for bringing the board up (compile with -DEDGESEARCH_SELF_TEST and call it once): runs the test samples
// of self_test_data.h, which the TFLite Micro interpreter ran at export, and returns how many the board classifies
// otherwise or whose outputs differ from the interpreter's. 0: the port computes what edgesearch measured; -1: the
// interpreter fails. {tolerance_words}
int self_test() {{
  int differ = 0;
  for (int s = 0; s < kSelfTestCount; ++s) {{
    const int got = classify(kSelfTestInputs[s], kInputLength);
    if (got < 0) return -1;
    const TfLiteTensor* out = Interpreter()->output(0);
    bool same = got == kSelfTestClasses[s];
    for (int i = 0; i < kSelfTestOutputLength; ++i) {{
      const float have = out->data.{output_field}[i], want = kSelfTestOutputs[s][i];
      same = same && std::fabs(have - want) <= {tolerance};
    }}
    differ += same ? 0 : 1;
  }}
  return differ;
}}
#endif
"""
# builtin operator -> MicroMutableOpResolver method
_RESOLVER = {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "FULLY_CONNECTED": "AddFullyConnected",
             "AVERAGE_POOL_2D": "AddAveragePool2D", "MEAN": "AddMean", "RESHAPE": "AddReshape", "RELU": "AddRelu",
             "SOFTMAX": "AddSoftmax", "QUANTIZE": "AddQuantize", "DEQUANTIZE": "AddDequantize", "ADD": "AddAdd",
             "MAX_POOL_2D": "AddMaxPool2D", "PAD": "AddPad", "TRANSPOSE": "AddTranspose", "MUL": "AddMul",
             "SQUEEZE": "AddSqueeze", "EXPAND_DIMS": "AddExpandDims", "CONCATENATION": "AddConcatenation",
             "STRIDED_SLICE": "AddStridedSlice", "RELU6": "AddRelu6", "SUM": "AddSum"}


# what a board's latency, energy, RAM and flash depend on: re-emulated for another board, never carried over
MOVED_FIGURES = ("latency_ms_median", "latency_ms_p90", "energy_mj")
BOARD_FIGURES = (*MOVED_FIGURES, "ram_bytes", "flash_bytes")


def _on_another_board(trial, row: Row, dataset, profile, runs_dir: Path) -> dict:
    """A TFLite Micro trial's figures on another TFLite Micro board: the same .tflite (so the same accuracy and
    arena), its latency and energy emulated from its operators for ``profile`` (with the board's calibration
    under ``runs_dir``, as a search on it would), its RAM and flash with that board's runtime. Refused, before
    anything is written, where it does not fit the board."""
    from hardware_targets import get_backend
    from hardware_targets.compile import CompiledArtifact
    from search.pipeline import limits, tflm_memory_metrics
    from search.stages.export import input_dtype
    from search.stages.tflite import arena_bytes

    tflite, onnx = trial_artifact(trial, "tflite", runs_dir), trial_artifact(trial, "onnx", runs_dir)
    if not tflite or not tflite.is_file():
        raise ConfigError(f"The measured .tflite of trial {row.number} is gone ({tflite}); re-run the search.")
    dtype = input_dtype(row.knobs["precision"])
    graph_only = CompiledArtifact("", dict(profile.tvm_target), (1, *dataset.sample_shape), dtype.name)
    metrics = dict(get_backend(profile, runs_dir).measure(graph_only, tflite, row.knobs["precision"],
                                                          dataset.x_val[:1].astype(dtype), EXPORT_TIMING_REPEATS))
    metrics.update(tflm_memory_metrics(tflite, onnx, arena_bytes(tflite), profile))
    for name, limit in limits(profile).items():
        if limit and metrics[name].value > limit:
            kind = name.split("_")[0].upper() if name.startswith("ram") else "flash"
            raise ConfigError(f"Trial {row.number} needs {metrics[name].value / 1024:,.0f} KiB of {kind} on "
                              f"{profile.name} ({metrics[name].provenance}), which has {limit / 1024:,.0f} KiB: "
                              f"export a smaller trial (--trial N) or search on {profile.name} itself.")
    return {name: {"value": metrics[name].value, "unit": metrics[name].unit,
                   "provenance": metrics[name].provenance} for name in BOARD_FIGURES if name in metrics}


def _ship_tflm(trial, row: Row, out: Path, dataset, profile, runs_dir: Path) -> dict:
    """The microcontroller export: the .tflite the search measured, as a file and as a C array, the arena it
    needs, a main.cc sketch, verified by re-running the test split in the TFLM interpreter."""
    import numpy as np

    from objectives.accuracy import accuracy
    from search.stages.tflite import (
        ARENA_ALIGNMENT, arena_bytes, c_array, interpreter, model_inputs, op_names, takes_channels_last,
        tflm_outputs,
    )

    src = trial_artifact(trial, "tflite", runs_dir) or Path("")
    if not src.is_file():
        raise ConfigError(f"The measured .tflite of trial {row.number} is gone ({src}); re-run the search.")
    tflite = out / "model.tflite"
    shutil.copyfile(src, tflite)
    header, source = c_array(tflite)
    (out / "model_data.h").write_text(header)
    (out / "model_data.cc").write_text(source)
    arena = arena_bytes(tflite)
    aligned = -(-arena // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
    ops = op_names(tflite)
    details = interpreter(tflite).get_input_details(0)
    integer = np.issubdtype(details["dtype"], np.integer)
    quant = details["quantization_parameters"]
    layout = input_layout(dataset.sample_shape, takes_channels_last(details["shape"], dataset.sample_shape))
    scale, zero = (float(quant["scales"][0]), int(quant["zero_points"][0])) if integer else (1.0, 0)
    values = dataset.input_values()
    note = (f"int8, {_quantisation(scale, zero)}" if integer
            else "float32, as in training") + f"; {[int(d) for d in details['shape']]} in {layout} order" + (
        " (channel-last: a camera's or an interleaved sensor's buffer as it comes)" if layout.endswith("C") else "")
    registrations = "\n".join(f"    resolver.{_RESOLVER[op]}();" if op in _RESOLVER
                               else f"    // {op}: register it (no MicroMutableOpResolver method known to edgesearch)"
                               for op in ops)
    inputs = model_inputs(tflite, dataset.x_test)
    outputs = tflm_outputs(tflite, inputs)
    self_test = _self_test(inputs, outputs, dataset)
    (out / SELF_TEST_FILE).write_text(self_test.pop("header"))
    (out / "main.cc").write_text(MAIN_CC.format(
        kernels=f"its {profile.tflm_kernels} kernels" if profile.tflm_kernels else "the optimised kernels of your "
        "core", arena=arena,
        arena_aligned=aligned, input_c_type="int8_t" if integer else "float", op_count=len(ops),
        registrations=registrations, input_note=note, input_values=values,
        input_length=int(np.prod(details["shape"])),
        input_field="int8" if integer else "f",
        output_field="int8" if integer else "f", class_names=_c_class_names(dataset.class_names),
        quantize_input=_c_quantize_input(scale, zero) if integer else "",
        tolerance="1.0f" if integer else f"{FLOAT_TOLERANCE:g}f * (1.0f + std::fabs(want))",
        tolerance_words="An output may differ by one int8 step." if integer else f"An output may differ by "
        f"{FLOAT_TOLERANCE:g} of its size:\n// a board's float kernels may sum in another order."))
    predicted = outputs.argmax(axis=1)  # the test split as the board is fed it, as the search measured it
    got = accuracy(predicted, dataset.y_test)
    recorded, recorded_arena = row.value("accuracy_test"), row.value("tflm_arena_bytes")
    verification = {"tflm_test_accuracy": got, "recorded_tflm_test_accuracy": recorded,
                    "tflm_arena_bytes": arena, "recorded_tflm_arena_bytes": recorded_arena}
    if got != recorded or arena != recorded_arena:
        raise _not_reproduced("The exported .tflite", [("test accuracy in the TFLite Micro interpreter", got, recorded),
                                                       ("tensor arena bytes", arena, recorded_arena)])
    return {"runtime": "tflite-micro", "tflm": {"arena_bytes": arena, "arena_bytes_aligned": aligned, "ops": ops,
                                                 "input_dtype": str(np.dtype(details["dtype"]))},
            "input": {"shape": [int(d) for d in details["shape"]], "dtype": str(np.dtype(details["dtype"])),
                      "layout": layout, "values": values,
                      **({"quantization": {"scale": scale, "zero_point": zero}} if integer else {})},
            "verification": verification, "self_test": self_test,
            "per_class_test": _per_class(predicted, dataset, "TFLite Micro interpreter")}


SELF_TEST_FILE = "self_test_data.h"
SELF_TEST_BYTES = 16384  # at most this much flash of test inputs, and at least one sample
FLOAT_TOLERANCE = 1e-4  # of an output's size: a board's float kernels may sum in another order than the host's


def _self_test(inputs, outputs, dataset) -> dict:
    """The test samples main.cc's self_test() runs on the board, from the test split's ``inputs`` as the model takes
    them and the interpreter's ``outputs`` for them: one of each class the interpreter classifies right with a clear
    margin (a near tie could flip on a board whose float sums round otherwise), in class order, as many as fit
    ``SELF_TEST_BYTES``."""
    import numpy as np

    top2 = np.sort(outputs.astype(np.float64), axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > (1 if np.issubdtype(outputs.dtype, np.integer)
                                         else 10 * FLOAT_TOLERANCE * (1 + np.abs(top2[:, 1])))
    right = (outputs.argmax(axis=1) == dataset.y_test) & clear
    room = max(1, SELF_TEST_BYTES // inputs[0].nbytes)
    picked = [int(np.flatnonzero(right & (dataset.y_test == k))[0]) for k in range(dataset.num_classes)
              if (right & (dataset.y_test == k)).any()][:room] or [0]
    c_type = "int8_t" if np.issubdtype(inputs.dtype, np.integer) else "float"
    classes = [int(outputs[i].argmax()) for i in picked]
    named = [f"{i} (class {k}{' ' + ' '.join(dataset.class_names[k].split()) if dataset.class_names else ''})"
             for i, k in zip(picked, classes)]

    def rows(values) -> str:
        per_line = 16 if c_type == "int8_t" else 8

        def lines(row) -> str:
            flat = [_c_number(v) for v in row.reshape(-1)]
            return ",\n   ".join(", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line))

        return ",\n".join("  {" + lines(row) + "}" for row in values)

    header = (_c_comment("The test samples main.cc's self_test() runs on the board, and the outputs the TFLite "
                         "Micro interpreter gave them at export (compiled in with -DEDGESEARCH_SELF_TEST only).")
              + "#pragma once\n#include <cstdint>\n\n"
              f"constexpr int kSelfTestCount = {len(picked)};\nconstexpr int kSelfTestOutputLength = "
              f"{outputs.shape[1]};\n\n"
              + _c_comment(f"Test-split samples {', '.join(named)}, as the model takes them ({c_type}; in its axis "
                           "order).")
              + f"const {c_type} kSelfTestInputs[kSelfTestCount][{inputs[0].size}] = "
              f"{{\n{rows(inputs[picked])}\n}};\n\n// The class the interpreter gave each, and its output tensor.\n"
              f"const int kSelfTestClasses[kSelfTestCount] = {{{', '.join(map(str, classes))}}};\n"
              f"const {c_type} kSelfTestOutputs[kSelfTestCount][kSelfTestOutputLength] = {{\n"
              f"{rows(outputs[picked])}\n}};\n")
    return {"file": SELF_TEST_FILE, "test_samples": picked, "classes": classes, "header": header}


def _c_comment(text: str) -> str:
    import textwrap

    return "".join(f"// {line}\n" for line in textwrap.wrap(text, 114))


def _c_number(value) -> str:
    """An int8 as is, a float32 in the digits that give it back exactly, as a C++ float literal."""
    if isinstance(value, numbers.Integral):  # numpy's integers included
        return str(int(value))
    text = f"{float(value):.9g}"
    return (text if any(c in text for c in ".en") else text + ".0") + "f"


def _quantisation(scale: float, zero_point: int) -> str:
    """The int8 input's formula in words, one way in main.cc and on the card."""
    return f"q = round(x / {scale:.9g}) {'-' if zero_point < 0 else '+'} {abs(zero_point)}"


def _c_quantize_input(scale: float, zero_point: int) -> str:
    """main.cc's function from a value as in training to the int8 the model takes. It saturates: the calibrated
    range may be narrower than the data's (an accelerometer's counts reached 32,104; the int8 input of a model
    calibrated on them, 29,342), and a plain cast wraps such a value around to a large negative one."""
    return ("// One input value, as in training, as the model takes it: the quantisation above, saturated to int8.\n"
            "inline int8_t QuantizeInput(float x) {\n"
            f"  const long q = std::lround(x / {scale:.9g}f) + ({zero_point});\n"
            "  return static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q));\n"
            "}\n\n")


def _c_class_names(names: tuple[str, ...]) -> str:
    """main.cc's table of the dataset's class names, which classify()'s result indexes; none without names."""
    if not names:
        return ""
    return ("// The dataset's class names: classify() returns an index into this table.\n"
            f"constexpr const char* kClassNames[] = {{{', '.join(_c_string(name) for name in names)}}};\n\n")


def _c_string(text: str) -> str:
    """A C string literal of ``text`` in UTF-8 that any compiler reads alike: printable ASCII as is, every other
    byte a three-digit octal escape. A \\u escape cannot name a letter beyond the BMP (an emoji), a hex escape
    would take the letters after it as digits, and ``?`` is escaped against trigraphs (C++14 and older)."""
    def one(byte: int) -> str:
        if chr(byte) in '"\\?':
            return "\\" + chr(byte)
        return chr(byte) if 32 <= byte < 127 else f"\\{byte:03o}"

    return '"' + "".join(one(b) for b in text.encode()) + '"'


def _per_class(predicted, dataset, runtime: str) -> dict:
    """The shipped model's test predictions by class (``objectives.accuracy.per_class``), with where they ran."""
    from objectives.accuracy import per_class

    return {"runtime": runtime, "provenance": "measured",
            **per_class(predicted, dataset.y_test, dataset.num_classes)}


def model_input(dataset, dtype: str) -> dict:
    """The model card's input of a model that takes channel-first batches of one: shape, dtype, axis order, and the
    channels-last order the dataset was saved in, which predict.py takes too."""
    return {"shape": [1, *dataset.sample_shape], "dtype": dtype, "layout": input_layout(dataset.sample_shape),
            **({"dataset_layout": dataset.saved_layout} if dataset.saved_layout else {}),
            "values": dataset.input_values(),
            **({"image_files": "decoded, made upright, converted and resized (bilinear) as edgesearch pack did"}
               if dataset.from_images else {})}


def input_layout(sample_shape: tuple[int, ...], channels_last: bool = False) -> str:
    """The order of the shipped model's input axes (N, C channels, L length, H height, W width): channel-first as
    edgesearch reads data, whatever order the user's archive had (its ``layout``), unless the model moved C last."""
    first = "NCL" if len(sample_shape) == 2 else "NCHW"
    return first.replace("C", "") + "C" if channels_last else first


def _remeasure(artifact, onnx_path: Path, precision: str, sample, profile, runtime: str, suffix: str,
               reference_ms: float | None = None, runs_dir: Path | None = None) -> dict:
    """Time what ships again with no search running (during a search the other workers share the machine's caches
    and memory bandwidth), in the runtime that ships; for another target than the search's, its only figures.
    A timing whose median reads far slower than ``reference_ms`` (the recorded median of the same artifact) was
    disturbed, and is taken again, as the shipping stage does (the fastest of at most three is kept)."""
    from hardware_targets import get_backend
    from hardware_targets.backends.local import time_onnxruntime
    from objectives.latency import least_disturbed
    from search.pipeline import set_threads
    from search.stages.export import ort_session
    from search.workers import THREADS_PER_WORKER

    set_threads(THREADS_PER_WORKER)  # the threads each search worker measured with

    def timed() -> dict:
        if runtime == "onnxruntime":
            return {n.replace("ort_latency", "latency"): m for n, m in time_onnxruntime(
                ort_session(onnx_path, THREADS_PER_WORKER), sample, EXPORT_TIMING_REPEATS).items()}
        return get_backend(profile, runs_dir).measure(artifact, onnx_path, precision, sample, EXPORT_TIMING_REPEATS)

    got = least_disturbed(timed, lambda g: g["latency_ms_median"].value, reference_ms)[0] if reference_ms else timed()
    names = ("latency_ms_median", "latency_ms_p90") + (() if suffix else ("energy_mj",))
    return {f"{name}{suffix}": {"value": m.value, "unit": m.unit, "provenance": m.provenance}
            for name, m in got.items() if name in names}


def _searched_dataset(spec, search: str):
    """The search's dataset, or a message that says where a relative path was meant to be read from."""
    from search.data import load_dataset
    from search.errors import DatasetError

    try:
        return load_dataset(spec.dataset, spec.class_weight)
    except DatasetError as exc:
        if Path(spec.dataset).exists():
            raise
        if Path(spec.dataset).is_absolute():
            raise DatasetError(f"{exc} Search {search!r} was trained on it: pass its copy on this machine with "
                               "--dataset PATH.") from exc
        raise DatasetError(f"{exc} Search {search!r} stored it as a path relative to the folder it was submitted "
                           "from: run export from that folder, or pass --dataset PATH.") from exc


def _int8_against_fp32(row, spec, dataset, profile, build_target, runtime: str, int8: tuple[str, Path],
                       tuning_cache: Path) -> dict:
    """An int8 model's speed against fp32 of the same shapes in the runtime that ships, timed here in turns, so that
    "int8" is not read as a speed-up it may not have (TVM computes QDQ graphs in float, except the pointwise
    convolutions of a build for a CPU with VNNI; onnxruntime has integer kernels). ``int8`` is the shipped library
    and ONNX. The fp32 graph has untrained weights: its latency depends on its shapes alone."""
    import tempfile

    from hardware_targets.backends.local import onnxruntime_timer, time_in_turns, tvm_timer
    from hardware_targets.compile import compile_tvm
    from search.candidate import Candidate
    from search.pipeline import set_threads
    from search.stages.export import ort_session
    from search.stages.screen import untrained_graph
    from search.workers import THREADS_PER_WORKER

    fp32 = Candidate(**{**row.knobs, "precision": "fp32"}, budget=spec.budget, seed=spec.seed)
    sample = dataset.x_val[:1].astype("float32")  # a QDQ graph takes float input too
    set_threads(THREADS_PER_WORKER)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "fp32.onnx"
        untrained_graph(fp32, dataset, onnx_path)
        if runtime == "tvm":
            fp32_library = compile_tvm(onnx_path, build_target, Path(tmp) / "fp32.so", (1, *dataset.sample_shape),
                                       "float32", cache_dir=tuning_cache).library
            timers = {"int8": tvm_timer(int8[0], sample, "float32"), "fp32": tvm_timer(fp32_library, sample, "float32")}
        else:
            timers = {name: onnxruntime_timer(ort_session(path, THREADS_PER_WORKER), sample)
                      for name, path in (("int8", int8[1]), ("fp32", onnx_path))}
        timed = time_in_turns(timers, EXPORT_TIMING_REPEATS, rapl=None)
    int8_ms, fp32_ms = (timed[k].median_ms for k in ("int8", "fp32"))
    return {"runtime": runtime, "int8_ms": int8_ms, "fp32_ms": fp32_ms, "speedup": fp32_ms / int8_ms,
            "provenance": "measured", "how": "medians timed in turns at export, one thread; the fp32 graph has the "
                                             "same shapes and untrained weights"}


def _cpu_line(cpu: dict | None) -> str:
    return "not recorded" if not cpu else f"{cpu['model']} ({' '.join(cpu['isa']) or 'no ISA flags read'})"


def _predict_takes(card: dict) -> str:
    """What predict.py reads besides an array in the model's own layout, where the export ships one (an MCU's
    does not)."""
    given = card["input"]
    takes = ([f"{given['dataset_layout']}, the order the dataset was saved in"] if given.get("dataset_layout") else [])
    takes += (["an image file, as the dataset was packed from them"] if given.get("image_files") else
              ["a window as a .csv, a line per sample"] if len(given["shape"]) == 3 else [])
    return f"; predict.py also takes {' and '.join(takes)}" if takes and "predict.py" in card["artifacts"] else ""


def model_card_markdown(card: dict) -> str:
    lines = [f"# Model card: {card['search']} / trial {card['trial']}", "",
             f"Chosen as the {card['why']}." + (f" Exported while {card['search_unfinished']}: the search's final "
                                                 "winner may differ." if card.get("search_unfinished") else ""), "",
             f"- dataset: `{card['dataset']}`; input {card['input']['shape']} {card['input']['dtype']}"
             f" ({card['input'].get('layout', '?')}{_predict_takes(card)})"
             + (f"; splits: {card['dataset_splits']}" if card.get("dataset_splits") else ""),
             *([f"- input values, as in training: {card['input']['values']}"] if card["input"].get("values") else []),
             *([f"- input quantisation: {_quantisation(q['scale'], q['zero_point'])}, saturated to int8 "
                "(`QuantizeInput` in main.cc)"] if (q := card["input"].get("quantization")) else []),
             f"- target profile: `{card['target_profile']}` (searched for `{card['measured_on']}`; each figure below "
             "says whether it was measured, emulated or estimated)"
             + (f"; **{card['over_budget_on_target']}**" if card.get("over_budget_on_target") else ""),
             *([f"- emulated latency and energy: the profile's device model with {card['emulator']}"
                + (f" (**{card['emulator_since']}**)" if card.get("emulator_since") else "")]
               if card.get("emulator") else []),
             f"- host CPU of the search: {_cpu_line(card.get('measured_on_cpu'))}; of this export: "
             f"{_cpu_line(card.get('exported_on_cpu'))}",
             "- knobs: " + ", ".join(f"{k}={v}" for k, v in card["knobs"].items()),
             f"- runtime: {card.get('runtime', 'tvm')}" + (" (forced)" if card.get("runtime_forced") else "")
             + (" - p90 ms timed side by side after the search: " + ", ".join(
                 f"{k} {v['latency_ms_p90']:.4g}" for k, v in card["runtime_figures"].items())
                if card.get("runtime_figures") else ""),
             (f"- MLflow run: `{card['mlflow_run_id']}`" if card.get("mlflow_run_id")
              else "- MLflow run: none (exported without MLflow, or the trial was never logged to it)"),
             "", "| figure | value | unit | provenance |",
             "|---|---|---|---|"]
    for name, m in card["metrics"].items():
        lines.append(f"| {name} | {m['value']:.6g} | {m['unit']} | {m['provenance']} |")
    lines += _compressed_lines(card)
    q = card.get("int8_against_fp32")
    if q:
        verdict = (f"{q['speedup']:.2f}x faster" if q["speedup"] >= INT8_FASTER else
                   f"not faster ({q['speedup']:.2f}x): int8 buys 4x smaller weights here, not speed")
        lines += ["", f"int8 against fp32 of the same shapes in {q['runtime']} on this CPU: {verdict} (int8 "
                  f"{q['int8_ms']:.4g} ms, fp32 {q['fp32_ms']:.4g} ms; {q['how']}; {q['provenance']})."]
    if "latency_ms_median_at_export" in card["metrics"]:
        lines += ["", "The search timed each candidate while its other workers trained beside it; the `_at_export` "
                  "figures time the shipped library again at export" + (
                      ", while that search still ran on this machine." if card.get("search_unfinished") and
                      "still running" in card["search_unfinished"] else ", with no search running.")]
    v = card["verification"]
    if "tflm_test_accuracy" in v:
        t = card["tflm"]
        check = (f"Test accuracy re-run at export in the TFLite Micro interpreter: {v['tflm_test_accuracy']:.4f} "
                 f"(recorded {v['recorded_tflm_test_accuracy']:.4f}); tensor arena {v['tflm_arena_bytes']:,} bytes "
                 f"(recorded {v['recorded_tflm_arena_bytes']:,.0f}); allocate {t['arena_bytes_aligned']:,} "
                 f"(`main.cc`). Operators to register: {', '.join(t['ops'])}.")
    else:
        check = (f"Test accuracy re-run at export: onnxruntime {v['onnxruntime_test_accuracy']:.4f} (recorded "
                 f"{v['recorded_onnxruntime_test_accuracy']:.4f}), TVM host build {v['tvm_host_test_accuracy']:.4f} "
                 f"(recorded {v['recorded_tvm_test_accuracy']:.4f}); library architecture "
                 f"{v['library_architecture']}.")
    lines += _per_class_lines(card.get("per_class_test"), card.get("class_names") or ())
    lines += _run_lines(card)
    lines += ["", "## Verification", "", check, "", "## Files", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in card["artifacts"].items()]
    lines += ["", "## Versions", ""] + [f"- {k} {v}" for k, v in card["versions"].items()]
    return "\n".join(lines) + "\n"


def _per_class_lines(figures: dict | None, names=(), up_to: int = 12) -> list[str]:
    """The test split by class: support, recall and precision, and the confusion matrix for a few classes. With
    more classes than ``up_to``, the worst ``up_to`` by recall first, each with the class it is most often taken
    for (what the matrix would show), and the rest left to ``model_card.json``. Rows name a class by its number
    and, where the dataset gave ``names``, its name."""
    if not figures:
        return []
    names = [" ".join(name.split()).replace("|", "\\|") for name in names]  # one table cell each

    def label(c: int) -> str:
        return f"{c} ({names[c]})" if names else str(c)

    def cell(v):
        return "-" if v is None else f"{v:.4f}"

    rows = list(enumerate(zip(figures["support"], figures["recall"], figures["precision"])))
    matrix = figures["confusion_matrix"]
    title = f"## By class (test split, {figures['runtime']}, {figures['provenance']})"
    if len(rows) <= up_to:
        lines = ["", title, "", "| class | samples | recall | precision |", "|---|---|---|---|"]
        lines += [f"| {label(c)} | {n} | {cell(r)} | {cell(p)} |" for c, (n, r, p) in rows]
        lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", "",
                  "| true \\ predicted | " + " | ".join(str(c) for c in range(len(matrix))) + " |",
                  "|---" * (len(matrix) + 1) + "|"]
        return lines + [f"| {label(c)} | " + " | ".join(str(v) for v in row) + " |" for c, row in enumerate(matrix)]

    def taken_for(c: int) -> str:
        wrong = [(n, p) for p, n in enumerate(matrix[c]) if p != c and n]
        if not wrong:
            return "-"
        n, p = max(wrong)
        return f"{p} ({names[p] + '; ' if names else ''}{n} of {figures['support'][c]})"

    worst = sorted((row for row in rows if row[1][1] is not None), key=lambda row: (row[1][1], row[1][2] or 0.0))
    lines = ["", title, "", f"The {up_to} of {len(rows)} classes with the lowest recall, worst first; every class "
             "and the confusion matrix are in `model_card.json` (`per_class_test`).", "",
             "| class | samples | recall | precision | most often predicted as |", "|---|---|---|---|---|"]
    return lines + [f"| {label(c)} | {n} | {cell(r)} | {cell(p)} | {taken_for(c)} |"
                    for c, (n, r, p) in worst[:up_to]]


def _self_test_lines(self_test: dict | None) -> str:
    if not self_test:
        return ""
    return (f" To check the port once it runs, build with `-DEDGESEARCH_SELF_TEST` and call `self_test()` (declare "
            f"`int self_test();`): it runs {len(self_test['test_samples'])} test-split sample(s) kept in "
            f"`{self_test['file']}` (number {_listed(self_test['test_samples'])}) and returns how "
            "many the board classifies otherwise, or computes other outputs for, than the TFLite Micro interpreter "
            "did at export; 0 means it computes what was measured. Leave it out of the shipped build: the samples "
            "take flash. A PC runs the same check before any board: build TFLM for the host (`make -f "
            "tensorflow/lite/micro/tools/make/Makefile microlite` in a tflite-micro checkout) and link it with "
            "`main.cc` and `model_data.cc`, built with `-DEDGESEARCH_SELF_TEST`, and a `main()` that returns "
            "`self_test()`.")


def _timing_lines(card: dict) -> str:
    """For an emulated board: how the user's own timing of this model makes the next searches' figures the board's."""
    if not card.get("emulator"):
        return ""
    return (f" Its latency above is emulated, with {card['emulator']}. Once it runs, time one inference on the board "
            "(the median of many) and fit the emulator to it: a CSV whose first line is `model,latency_ms` (optionally "
            f"`,energy_uj`) and a row with this folder and the milliseconds, then `{card['calibrate_with']}`; "
            "searches with that runs folder then emulate the board as it is.")


def _listed(items: list[int], shown: int = 10) -> str:
    more = f" and {len(items) - shown} more, which `model_card.json` lists" if len(items) > shown else ""
    return ", ".join(map(str, items[:shown])) + more


def _run_lines(card: dict) -> list[str]:
    """How to run the shipped files where they are going: what a user asks first after an export."""
    versions = card["versions"]
    if card.get("runtime") == "tflite-micro":
        return ["", "## Run it", "", "Add `model_data.cc`, `model_data.h` and `main.cc` to a TensorFlow Lite Micro "
                "project for the board, call `classify()` with one input as the comment in `main.cc` describes, "
                "build and flash it with the board's toolchain."
                + (" The class number it returns indexes `kClassNames` in `main.cc`, the dataset's class names."
                   if card.get("class_names") else "")
                + _self_test_lines(card.get("self_test")) + _timing_lines(card)]
    arch = ", ".join(card["verification"]["library_architecture"])
    ort_line = f"onnxruntime {versions.get('onnxruntime', '')}".rstrip()
    tvm_line = f"apache-tvm {versions.get('tvm', '')}".rstrip()
    if "mtriple" in (card.get("tvm_target") or {}):
        how = (f"On the board ({arch} Linux): send the folder, or `model.tar.gz` and `model.onnx.gz` with "
               f"`predict.py` and `model_card.json` (then `gunzip model.tar.gz`); install numpy, {tvm_line} (or "
               "TVM's runtime of that version built on the board) and a C compiler (TVM links `model.tar` into "
               "`model.tar.so` the first time it loads it), and run `python predict.py input.npy`. `--runtime "
               f"onnxruntime` runs `model.onnx` instead, with {ort_line}; so does any other machine."
               + _timing_lines(card))
    else:
        how = (f"`python predict.py input.npy` runs the model in the runtime the card ships it with, here or on a "
               f"machine of the same CPU kind (`model.so` is {arch} code built for the target string in "
               f"`model_card.json`), with numpy and {tvm_line if card.get('runtime') == 'tvm' else ort_line}. "
               f"`--runtime` picks the other; onnxruntime runs `model.onnx` on any CPU.")
    return ["", "## Run it", "", how]


def _compressed_lines(card: dict) -> list[str]:
    """What the model files take gzip-compressed, and what that size is good for on the target."""
    sizes = {kind: (card["metrics"][f"{kind}_file_bytes"]["value"], card["metrics"][f"{kind}_gzip_bytes"]["value"])
             for kind in STORED_KINDS.values() if f"{kind}_gzip_bytes" in card["metrics"]}
    copies = card.get("gzip_copies") or {}
    if "tflite" in sizes:
        plain, packed = sizes["tflite"]
        return ["", f"Gzip-compressed, `model.tflite` takes {packed:,.0f} bytes ({plain / packed:.2f}x smaller than "
                f"its {plain:,.0f}): only how it travels. The microcontroller runs it from flash as stored, so the "
                "zeros of unstructured pruning save no flash there, and no compressed copy is written."]
    listed = []
    for name, copy in copies.items():
        plain, packed = sizes[STORED_KINDS[Path(name).suffix]]
        listed.append(f"`{copy}` {packed:,.0f} bytes, {plain / packed:.2f}x smaller than `{name}`")
    return ["", f"Gzip-compressed copies to send to a device: {'; '.join(listed)}. Unpack them there with `gunzip`; "
            "`predict.py` also reads `model.onnx.gz` as it is. The runtime holds the weights dense once loaded, so "
            "the compressed copy is the only size that zeroed (unstructured) weights lower; removed channels lower "
            "all of them."]


def registered_model_name(search: str) -> str:
    return f"edgesearch-{search}"


def _register(tracking_uri: str, search: str, run_id: str | None, out: Path, card: dict) -> str:
    """One registered model per search, a version per export, the card as tags and description.

    With the trial's run, the export's files become that run's ``exports/<id>/`` artifacts and the version's source, so
    the version can be downloaded wherever the tracking server reaches (a local folder is refused as a source by a
    tracking server, and would name another machine's disk).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name = registered_model_name(search)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"Exports of edgesearch search {search!r}")
    tags = {"trial": str(card["trial"]), "target": card["target_profile"], "dataset": card["dataset"],
            **{f"knob.{k}": str(v) for k, v in card["knobs"].items()},
            **{m: f"{f['value']:.6g} {f['unit']} ({f['provenance']})" for m, f in card["metrics"].items()},
            "model.onnx.sha256": card["artifacts"]["model.onnx"], "search": search,
            "latency_budget_ms": str(card["latency_budget_ms"]), "exported_to": str(out),
            **({"emulator": card["emulator"]} if card.get("emulator") else {})}
    if card.get("accuracy_floor") is not None:
        tags["accuracy_floor"] = f"{card['accuracy_floor']:.4f}"
    search_run = card.get("mlflow_search_run_id")
    if search_run:  # back to the search: its parent run holds the front, the plots and every candidate
        experiment = client.get_run(search_run).info.experiment_id
        tags["search_run"] = f"#/experiments/{experiment}/runs/{search_run}"
    card["mlflow_artifact_path"] = f"exports/{uuid.uuid4().hex[:12]}" if run_id else None
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/{card['mlflow_artifact_path']}" if run_id else out.as_uri(), run_id=run_id,
        tags=tags, description=model_card_markdown(card))
    return str(version.version)
