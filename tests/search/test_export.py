"""Export after a real tiny search: files, card, verification, registry, errors."""

import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.errors import ConfigError
from hardware_targets.compile import tuning_dir
from search.export import Pick, elf_machines, export_search
from search.study import default_storage, load_study
from tests.search.conftest import DIGITS_VALUES


@pytest.fixture(scope="module")
def exported(tracked_search, tmp_path_factory):
    spec, outcome, client, runs = tracked_search
    if outcome.best is None:
        pytest.fail("the tracked search found no feasible candidate to export")
    out = tmp_path_factory.mktemp("export") / "winner"
    card = export_search(spec.name, out, storage_url=default_storage(runs), runs_dir=runs,
                         tracking_uri=client.tracking_uri)
    return out, card, outcome, client, runs


def test_export_writes_the_deployable_folder(exported, digits):
    out, card, outcome, _, runs = exported
    for name in ("model.onnx", "model.so", "model_card.json", "MODEL_CARD.md", "predict.py"):
        assert (out / name).is_file(), name
    # tuning records ship where the library was built with some; an untuned build ships none, not empty files
    shipped_records = list((out / "tuning_records").glob("*"))
    assert all(f.stat().st_size > 0 for f in shipped_records)
    cached = tuning_dir(runs / "tuning", card["tvm_target"]) / "database_tuning_record.json"
    assert bool(shipped_records) == (cached.is_file() and cached.stat().st_size > 0)
    assert card["trial"] == outcome.best.number
    assert card["search_unfinished"] is None and "winner may differ" not in (out / "MODEL_CARD.md").read_text()
    assert elf_machines(out / "model.so") == {"x86_64"}
    for name, digest in card["artifacts"].items():
        if name not in ("model_card.json", "MODEL_CARD.md"):
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    for figure in card["metrics"].values():
        assert figure["provenance"] in ("measured", "emulated", "estimated")
    assert card["metrics"]["latency_ms_median"]["provenance"] == "measured"
    # what ships is what the shipping stage timed fastest: TVM and onnxruntime side by side, the same figure here
    figures = card["runtime_figures"]
    assert set(figures) >= {"tvm", "onnxruntime"} and card["runtime"] in ("tvm", "onnxruntime")
    fastest = min(figures, key=lambda k: figures[k]["latency_ms_p90"])
    assert card["runtime"] == fastest.split("-")[0]
    assert card["metrics"]["latency_ms_p90"]["value"] == figures[fastest]["latency_ms_p90"]
    assert f"runtime: {card['runtime']}" in (out / "MODEL_CARD.md").read_text()
    assert card["mlflow_run_id"] and f"MLflow run: `{card['mlflow_run_id']}`" in (out / "MODEL_CARD.md").read_text()
    # digits are images, read channel-first: the card says the order the shipped model takes its input in
    assert card["input"]["shape"] == [1, 1, 8, 8] and card["input"]["layout"] == "NCHW"
    # the values a device must feed, which shape and dtype do not say: digits as the loader scaled them
    assert card["input"]["values"] == DIGITS_VALUES
    assert f"- input values, as in training: {DIGITS_VALUES}" in (out / "MODEL_CARD.md").read_text()
    told = subprocess.run([sys.executable, "predict.py", "--help"], cwd=out, capture_output=True, text=True,
                          timeout=120)
    assert "its values as in training: scikit-learn's pixel counts" in " ".join(told.stdout.split()), told.stderr
    # the card says which splits its figures come from: digits' test and val splits are drawn from sklearn's one set
    splits = (f"{len(digits.x_train)} train / {len(digits.x_val)} val / {len(digits.x_test)} test (drawn here: "
              "test 20% of the set, val 15% of train; stratified by class, seed 0)")
    assert splits in card["dataset_splits"] and splits in (out / "MODEL_CARD.md").read_text()
    assert json.loads((out / "model_card.json").read_text())["trial"] == card["trial"]
    assert "| latency_ms_median |" in (out / "MODEL_CARD.md").read_text()
    assert "`python predict.py input.npy` runs the model" in (out / "MODEL_CARD.md").read_text()
    alone, p90 = card["metrics"]["latency_ms_median_at_export"], card["metrics"]["latency_ms_p90_at_export"]
    assert alone["provenance"] == p90["provenance"] == "measured"
    assert 0 < alone["value"] <= p90["value"]
    assert "| latency_ms_median_at_export |" in (out / "MODEL_CARD.md").read_text()
    # predict.py runs the model in the runtime the card ships it with, or in the one asked for
    runs = {runtime: subprocess.run([sys.executable, "predict.py", *flag], cwd=out, capture_output=True, text=True,
                                    timeout=120)
            for runtime, flag in (("shipped", []), ("tvm", ["--runtime", "tvm"]),
                                  ("onnxruntime", ["--runtime", "onnxruntime"]))}
    for runtime, done in runs.items():
        assert done.returncode == 0 and done.stdout.startswith("class "), done.stderr
        assert done.stdout.rstrip().endswith(f"({card['runtime'] if runtime == 'shipped' else runtime})")
    run = runs["onnxruntime"]
    # a batch of test samples, each classified as onnxruntime classifies it; an array in another axis order is
    # refused with what to do, not reshaped into nonsense
    import numpy as np
    import onnxruntime as ort

    from search.data import load_dataset

    batch = load_dataset("digits").x_test[:3]
    np.save(out.parent / "batch.npy", batch)
    np.save(out.parent / "hwc.npy", np.moveaxis(batch, 1, -1))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    expected = [int(session.run(None, {inp.name: x[None].astype(dtype)})[0].argmax()) for x in batch]
    many = subprocess.run([sys.executable, "predict.py", str(out.parent / "batch.npy"), "--runtime", "onnxruntime"],
                          cwd=out, capture_output=True, text=True, timeout=120)
    assert [line.split()[:4] for line in many.stdout.splitlines()] == [
        ["sample", str(i), "class", str(k)] for i, k in enumerate(expected)], many.stderr
    # each sample's logits, one per class: a flat list, as printed for one sample
    logits = [json.loads(line.split(" logits ", 1)[1].rsplit(" (", 1)[0]) for line in many.stdout.splitlines()]
    assert [len(one) for one in logits] == [10] * 3 and all(isinstance(v, float) for one in logits for v in one)
    # grey images saved without their channel axis, as edgesearch reads a dataset: the same classes
    np.save(out.parent / "grey.npy", batch[:, 0])
    np.save(out.parent / "one.npy", batch[0, 0])
    for bare, lines in (("grey.npy", many.stdout), ("one.npy", many.stdout.splitlines()[0].split(" ", 2)[2] + "\n")):
        got = subprocess.run([sys.executable, "predict.py", str(out.parent / bare), "--runtime", "onnxruntime"],
                             cwd=out, capture_output=True, text=True, timeout=120)
        assert got.returncode == 0 and got.stdout == lines, got.stderr
    # the input named, as users also type it
    named = subprocess.run([sys.executable, "predict.py", "--input", str(out.parent / "batch.npy"), "--runtime",
                            "onnxruntime"], cwd=out, capture_output=True, text=True, timeout=120)
    assert named.returncode == 0 and named.stdout == many.stdout, named.stderr
    wrong = subprocess.run([sys.executable, "predict.py", str(out.parent / "hwc.npy")], cwd=out, capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 2 and "np.moveaxis them to NCHW" in wrong.stderr and not wrong.stdout
    # the same digits saved channels-last (layout="NHWC"): the card names that order, and predict.py takes a batch
    # or one sample in it, as the search read the dataset
    from search.data import load_npz
    from search.export import model_card_markdown, model_input

    np.savez(out.parent / "hwc.npz", x=np.moveaxis(load_dataset("digits").x_train, 1, -1),
             y=load_dataset("digits").y_train, layout="NHWC")
    saved_hwc = out.parent / "saved_hwc"
    shutil.copytree(out, saved_hwc)
    hwc_card = {**card, "input": model_input(load_npz(out.parent / "hwc.npz"), card["input"]["dtype"])}
    assert hwc_card["input"] == {**card["input"], "dataset_layout": "NHWC",
                                 "values": "as stored in the dataset file, unscaled; the training data spans 0 to 1"}
    (saved_hwc / "model_card.json").write_text(json.dumps(hwc_card))
    assert "predict.py also takes NHWC, the order the dataset was saved in" in model_card_markdown(hwc_card)
    np.save(out.parent / "one_hwc.npy", np.moveaxis(batch[0], 0, -1))
    first = many.stdout.splitlines()[0].split(" ", 2)[2] + "\n"
    for given, lines in (("hwc.npy", many.stdout), ("one_hwc.npy", first)):
        got = subprocess.run([sys.executable, "predict.py", str(out.parent / given), "--runtime", "onnxruntime"],
                             cwd=saved_hwc, capture_output=True, text=True, timeout=120)
        assert got.returncode == 0 and got.stdout == lines, got.stderr
    # a dataset saved with class_names: the card lists them, and predict.py prints each class's name beside it
    names = [f"digit {k}" for k in range(10)]
    named = out.parent / "named"
    shutil.copytree(out, named)
    (named / "model_card.json").write_text(json.dumps({**card, "class_names": names}))
    got = subprocess.run([sys.executable, "predict.py", str(out.parent / "batch.npy"), "--runtime", "onnxruntime"],
                         cwd=named, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and [line.split()[:6] for line in got.stdout.splitlines()] == [
        ["sample", str(i), "class", str(k), "(digit", f"{k})"] for i, k in enumerate(expected)], got.stderr
    # each model file gzip-compressed beside it, to send: what GNU gzip makes of it (deflates differ a bit)
    markdown = (out / "MODEL_CARD.md").read_text()
    for name, kind in (("model.onnx", "onnx"), ("model.so", "library")):
        plain, packed = card["metrics"][f"{kind}_file_bytes"], card["metrics"][f"{kind}_gzip_bytes"]
        copy = out / card["gzip_copies"][name]
        assert plain["provenance"] == packed["provenance"] == "measured"
        assert plain["value"] == (out / name).stat().st_size and packed["value"] == copy.stat().st_size
        assert gzip.decompress(copy.read_bytes()) == (out / name).read_bytes()
        gnu = subprocess.run(["gzip", "-9", "-n", "-c", str(out / name)], capture_output=True, check=True).stdout
        assert abs(packed["value"] - len(gnu)) <= 0.02 * len(gnu) and packed["value"] < plain["value"]
        assert f"`{copy.name}` {packed['value']:,.0f} bytes" in markdown
    # a device sent only the compressed ONNX and predict.py classifies as the folder does, run from elsewhere
    device = out.parent / "device"
    device.mkdir()
    for name in ("model.onnx.gz", "predict.py"):
        shutil.copyfile(out / name, device / name)
    sent = subprocess.run([sys.executable, str(device / "predict.py")], cwd=out.parent, capture_output=True,
                          text=True, timeout=60)
    assert sent.returncode == 0 and sent.stdout == run.stdout


def test_card_agrees_with_mlflow_and_is_registered(exported):
    _, card, _, client, _ = exported
    run = client.get_run(card["mlflow_run_id"])
    assert run.data.tags["edgesearch.trial"] == str(card["trial"])
    for name in ("accuracy", "latency_ms_median", "size_bytes"):
        assert run.data.metrics[name] == pytest.approx(card["metrics"][name]["value"])
    version = client.get_model_version(f"edgesearch-{card['search']}", card["registered_version"])
    assert version.tags["model.onnx.sha256"] == card["artifacts"]["model.onnx"]
    assert version.run_id == card["mlflow_run_id"]
    # the registry version leads back to its search and says what it was chosen under
    parent = run.data.tags["mlflow.parentRunId"]
    assert version.tags["search_run"] == f"#/experiments/{run.info.experiment_id}/runs/{parent}"
    assert float(version.tags["latency_budget_ms"]) == card["latency_budget_ms"]
    assert version.tags["latency_ms_p90"].endswith("(measured)") and version.tags["target"] == card["target_profile"]
    assert card["measured_on_cpu"]["model"] and card["exported_on_cpu"]["key"] == card["measured_on_cpu"]["key"]
    assert card["metrics"]["flash_bytes"]["provenance"] == "measured"


def test_a_disturbed_timing_at_export_is_taken_again(exported, digits, monkeypatch):
    from hardware_targets import load_profile
    from hardware_targets.backends import local
    from hardware_targets.compile import CompiledArtifact
    from search.export import _remeasure
    from objectives.latency import RETIMES

    out, card, *_ = exported
    timings, time_in_turns = [], local.time_in_turns
    monkeypatch.setattr(local, "time_in_turns", lambda *a, **k: timings.append(1) or time_in_turns(*a, **k))
    dtype = card["input"]["dtype"]
    artifact = CompiledArtifact(str(out / "model.so"), card["tvm_target"], tuple(card["input"]["shape"]), dtype)
    args = (artifact, out / "model.onnx", card["knobs"]["precision"], digits.x_val[:1].astype(dtype),
            load_profile("host"), card["runtime"], "_at_export")
    recorded = card["metrics"]["latency_ms_median"]["value"]
    got = _remeasure(*args, reference_ms=recorded / 10)  # as if recorded 10x faster than it runs: always disturbed
    assert len(timings) == 1 + RETIMES and got["latency_ms_median_at_export"]["provenance"] == "measured"
    timings.clear()
    _remeasure(*args, reference_ms=recorded * 10)  # far slower than it runs: nothing disturbed it
    assert len(timings) == 1


def test_verification_reproduces_the_recorded_accuracy(exported, digits):
    out, card, outcome, _, _ = exported
    v = card["verification"]
    assert v["onnxruntime_test_accuracy"] == v["recorded_onnxruntime_test_accuracy"]
    assert v["tvm_host_test_accuracy"] == v["recorded_tvm_test_accuracy"] == outcome.best.value("accuracy_test")
    # the shipped model's test predictions by class agree with the figures the search recorded
    by_class = card["per_class_test"]
    matrix = np.array(by_class["confusion_matrix"])
    assert by_class["support"] == np.bincount(digits.y_test, minlength=10).tolist() == matrix.sum(axis=1).tolist()
    assert np.trace(matrix) / matrix.sum() == pytest.approx(outcome.best.value("accuracy_test"), abs=1e-12)
    assert np.mean(by_class["recall"]) == pytest.approx(outcome.best.value("balanced_accuracy_test"), abs=1e-12)
    assert by_class["provenance"] == "measured" and "## By class (test split, " in (out / "MODEL_CARD.md").read_text()


def test_exporting_twice_is_byte_identical(exported, tracked_search, tmp_path):
    out, card, _, _, runs = exported
    spec = tracked_search[0]
    again = export_search(spec.name, tmp_path / "again", storage_url=default_storage(runs), runs_dir=runs,
                          register=False)
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert again["artifacts"] == card["artifacts"]


def test_cross_compiled_export_matches_the_profile(tracked_search, tmp_path):
    from hardware_targets import load_profile

    spec, outcome, _, runs = tracked_search
    rpi4, storage = load_profile("rpi4"), default_storage(runs)
    fp16 = [r for r in outcome.rows if r.state == "COMPLETE" and r.knobs["precision"] == "fp16"]
    if fp16:  # kept in the host space where this CPU has fp16 arithmetic; a Cortex-A72 has none
        with pytest.raises(ConfigError, match=f"Trial {fp16[0].number} .* is fp16, and target rpi4 has no fp16"):
            export_search(spec.name, tmp_path / "fp16", storage_url=storage, runs_dir=runs, target="rpi4",
                          pick=Pick(trial=fp16[0].number, force=True), register=False)
        assert not (tmp_path / "fp16").exists()
    runs_there = [r for r in outcome.rows if r.state == "COMPLETE" and rpi4.supports(r.knobs["precision"])
                  and r.reused_from is None]
    card = export_search(spec.name, tmp_path / "pi", storage_url=storage, runs_dir=runs, target="rpi4",
                         pick=Pick(trial=runs_there[0].number, force=True), register=False)
    assert card["verification"]["library_architecture"] == ["aarch64"]
    assert "latency_ms_median_at_export" not in card["metrics"]  # an emulated board is not timed again
    # another target than the search's: its latency is emulated for it here, not the host's figure relabelled
    assert card["metrics"]["latency_ms_p90"]["provenance"] == "emulated" and card["runtime_figures"] is None
    assert elf_machines(tmp_path / "pi" / "model.tar") == {"aarch64"}
    # predict.py runs model.tar where it was built for and says why it does not here
    here = [subprocess.run([sys.executable, "predict.py", *flag], cwd=tmp_path / "pi", capture_output=True,
                           text=True, timeout=120) for flag in ([], ["--runtime", "tvm"])]
    assert here[0].returncode == 0 and here[0].stdout.rstrip().endswith("(onnxruntime)")
    assert "model.tar is aarch64 code and this machine is x86_64" in here[0].stderr
    assert here[1].returncode == 2 and "run it on its board" in here[1].stderr
    assert "## Run it" in (tmp_path / "pi" / "MODEL_CARD.md").read_text()
    # a board of this machine's architecture, added as a file: its model.tar is linked and run by TVM on first use
    board = tmp_path / "x86-board.yaml"
    board.write_text(Path(rpi4.source).read_text().replace("name: rpi4", "name: x86-board").replace(
        "mtriple: aarch64-linux-gnu, mcpu: cortex-a72, mattr: [\"+neon\"]", "mtriple: x86_64-linux-gnu"))
    card = export_search(spec.name, tmp_path / "x86", storage_url=storage, runs_dir=runs, target=str(board),
                         pick=Pick(trial=runs_there[0].number, force=True), register=False)
    assert card["runtime"] == "tvm" and elf_machines(tmp_path / "x86" / "model.tar") == {"x86_64"}
    ran = {flag: subprocess.run([sys.executable, "predict.py", *flag], cwd=tmp_path / "x86", capture_output=True,
                                text=True, timeout=120) for flag in ((), ("--runtime", "onnxruntime"))}
    assert all(done.returncode == 0 for done in ran.values()), [done.stderr for done in ran.values()]
    assert ran[()].stdout.rstrip().endswith("(tvm)") and (tmp_path / "x86" / "model.tar.so").is_file()
    assert ran[()].stdout.split(" logits")[0] == ran[("--runtime", "onnxruntime")].stdout.split(" logits")[0]


def test_export_errors(tracked_search, tmp_path, capsys):
    from search.cli import main
    from search.spec import SearchSpace, SearchSpec
    from search.workers import run_search
    from tests.search.conftest import TINY

    spec, outcome, _, runs = tracked_search
    storage = default_storage(runs)
    one = SearchSpace(precision=("fp32",), pruning=("unstructured",), sparsity=(0.0, 0.0), temperature=(1.0, 1.0),
                      alpha=(1.0, 1.0), width=(0.25, 0.25))  # one candidate: trials 1 and 2 repeat trial 0
    lines = []
    twice = run_search(SearchSpec(name="twice", trials=3, workers=1, budget=TINY, space=one, recipes=False), runs,
                       storage_url=storage, report=lines.append)
    trials = load_study("twice", storage).trials  # the repeats reuse trial 0's result, and say so
    assert [t.user_attrs.get("reused_from_trial") for t in trials] == [None, 0, 0]
    assert all(t.state.name == "COMPLETE" for t in trials) and len({tuple(t.values) for t in trials}) == 1
    assert sum("result reused" in line for line in lines) == 2 and len(twice.rows) == 3
    with pytest.raises(Exception, match="No search named 'missing'"):
        export_search("missing", tmp_path / "x", storage_url=storage, runs_dir=runs)
    with pytest.raises(ConfigError, match=r"not on the feasible Pareto front \(the same knobs as trial 0, whose "
                                          r"result it reuses; front: \[0\]\)"):  # a reused result never is
        export_search("twice", tmp_path / "y", storage_url=default_storage(runs), runs_dir=runs, pick=Pick(trial=1))
    card = export_search("twice", tmp_path / "forced", storage_url=default_storage(runs), runs_dir=runs,
                         register=False, pick=Pick(trial=1, force=True))
    assert "--force" in card["why"] and card["trial"] == 1
    with pytest.raises(ConfigError, match="No feasible candidate reaches accuracy 1"):
        export_search(spec.name, tmp_path / "z", storage_url=storage, runs_dir=runs, pick=Pick(min_accuracy=1.0))
    capsys.readouterr()
    for said in (["1.01"], ["nan"], ["abc"], []):  # one line, exit 2, nothing written
        assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(tmp_path / "w"),
                     "--no-mlflow", "--pick", "fastest-above-accuracy", *said]) == 2
        err = capsys.readouterr().err
        assert "--pick fastest-above-accuracy" in err and len(err.strip().splitlines()) == 1, err
    # the name after --pick's rule, which took it: the rule is read, then the name (1.01 is out of range)
    assert main(["--runs-dir", str(runs), "export", "--pick", "fastest-above-accuracy", "1.01", spec.name, "--out",
                 str(tmp_path / "w"), "--no-mlflow"]) == 2
    assert "must be between 0 and 1, e.g. 0.95. Got 1.01" in capsys.readouterr().err
    for named, said in (([], "Name the search to export: edgesearch export NAME --out DIR"),
                        (["twice", "--search", spec.name], f"Two searches to export: 'twice' and --search '{spec.name}'")):
        assert main(["--runs-dir", str(runs), "export", *named, "--out", str(tmp_path / "w"), "--no-mlflow"]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "w").exists()
    import yaml

    from hardware_targets import load_profile
    from hardware_targets.errors import ProfileError

    board = tmp_path / "cross-board.yaml"  # built for with a cross compiler this machine lacks: said before building
    board.write_text(yaml.safe_dump({**yaml.safe_load(open(load_profile("rpi4").source).read()),
                                     "name": "cross-board", "cross_compiler": "aarch64-nowhere-linux-gnu-gcc"}))
    with pytest.raises(ProfileError, match="not on this machine's PATH.*nothing was exported"):
        export_search("twice", tmp_path / "v", storage_url=storage, runs_dir=runs, target=str(board), register=False)
    assert not (tmp_path / "v").exists()
    # artifacts changed since the search (a file overwritten on disk): the export fails its verification and leaves
    # no half-written folder that looks deployable
    import onnx
    from onnx import numpy_helper

    from search.export import VerificationError

    graph = Path(trials[0].user_attrs["artifacts"]["onnx"])
    kept = graph.read_bytes()
    try:
        model = onnx.load(graph)
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT:
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        onnx.save(model, graph)
        with pytest.raises(VerificationError,
                           match="does not reproduce the search's figures: test accuracy in onnxruntime"):
            export_search("twice", tmp_path / "tampered", storage_url=storage, runs_dir=runs, register=False)
        assert not (tmp_path / "tampered").exists()
    finally:
        graph.write_bytes(kept)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_search(spec.name, full, storage_url=storage, runs_dir=runs)
    assert (full / "keep.txt").read_text() == "mine"


@pytest.mark.slow  # ~50 s: a search and an int8 export; the export runs by default through its other tests
def test_an_int8_card_says_whether_int8_is_faster_than_fp32(tmp_path):
    from search.export import INT8_FASTER
    from search.spec import SearchSpace, SearchSpec
    from search.workers import run_search
    from tests.search.conftest import TINY

    int8 = SearchSpace(precision=("int8-ptq",), pruning=("structured",), sparsity=(0.0, 0.0), temperature=(1.0, 1.0),
                       alpha=(1.0, 1.0), width=(0.5, 0.5))
    storage = default_storage(tmp_path)
    run_search(SearchSpec(name="int8", trials=1, workers=1, budget=TINY, space=int8, recipes=False,
                          latency_budget_ms=100), tmp_path, storage_url=storage, report=lambda line: None)
    card = export_search("int8", tmp_path / "out", storage_url=storage, runs_dir=tmp_path, register=False)
    q = card["int8_against_fp32"]
    assert q["runtime"] == card["runtime"] and q["provenance"] == "measured"
    assert q["int8_ms"] > 0 and q["fp32_ms"] > 0 and q["speedup"] == pytest.approx(q["fp32_ms"] / q["int8_ms"])
    assert "in turns" in q["how"]
    text = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    said = f"{q['speedup']:.2f}x faster" if q["speedup"] >= INT8_FASTER else "not faster"
    assert f"int8 against fp32 of the same shapes in {q['runtime']} on this CPU: {said}" in text


def test_a_card_of_many_classes_lists_the_worst_first_with_what_each_is_taken_for():
    from objectives.accuracy import per_class
    from search.export import _per_class_lines

    labels = np.repeat(np.arange(20), 5)
    predicted = labels.copy()
    predicted[labels == 7] = 3                       # class 7 never found, always called 3
    predicted[np.flatnonzero(labels == 12)[:3]] = 13  # class 12: 2 of 5
    predicted[np.flatnonzero(labels == 4)[0]] = 0     # class 4: 4 of 5
    figures = {"runtime": "onnxruntime", "provenance": "measured", **per_class(predicted, labels, 20)}
    lines = _per_class_lines(figures)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| class")]
    # worst recall first; among the perfect ones, the least precise: 3 (5 of 10), 13 (5 of 8), 0 (5 of 6)
    assert [int(r.split(" | ")[0][2:]) for r in rows] == [7, 12, 4, 3, 13, 0, 1, 2, 5, 6, 8, 9]
    assert rows[:3] == ["| 7 | 5 | 0.0000 | - | 3 (5 of 5) |", "| 12 | 5 | 0.4000 | 1.0000 | 13 (3 of 5) |",
                        "| 4 | 5 | 0.8000 | 1.0000 | 0 (1 of 5) |"]
    assert rows[3] == "| 3 | 5 | 1.0000 | 0.5000 | - |"
    assert any("12 of 20 classes with the lowest recall" in line for line in lines)
    assert not any("Confusion matrix" in line for line in lines)
    # at 12 classes or fewer, every class in order and the matrix
    few = _per_class_lines({"runtime": "onnxruntime", "provenance": "measured",
                            **per_class(predicted[labels < 12] % 12, labels[labels < 12], 12)})
    assert "Confusion matrix (rows: true class, columns: predicted class):" in few
    assert [r.split(" | ")[0] for r in few if r.startswith("| ") and r[2].isdigit()][:12] == \
        [f"| {c}" for c in range(12)]
    # with the dataset's class names, each class is its number and its name, and so is what it is taken for
    names = [f"word{c}" for c in range(20)]
    named = [line for line in _per_class_lines(figures, names) if line.startswith("| ") and line[2].isdigit()]
    assert named[:2] == ["| 7 (word7) | 5 | 0.0000 | - | 3 (word3; 5 of 5) |",
                         "| 12 (word12) | 5 | 0.4000 | 1.0000 | 13 (word13; 3 of 5) |"]
    # a name with the table's bar or a line break in it stays in its cell
    names[7], names[3] = "on|off", "two\nlines"
    named = [line for line in _per_class_lines(figures, names) if line.startswith("| 7 ")]
    assert named == ["| 7 (on\\|off) | 5 | 0.0000 | - | 3 (two lines; 5 of 5) |"]


def test_main_cc_names_the_classes_classify_returns(tmp_path):
    """The table compiles and holds each name as the dataset gave it, quotes and non-ASCII letters included."""
    from search.export import _c_class_names

    assert _c_class_names(()) == ""
    # beyond the BMP (an emoji, a rare CJK letter), which a \u escape cannot name; a tab; a ? before = or /
    names = ("yes", 'say "hi"', "caf\u00e9", "back\\slash", "cat \U0001F408", "\U00020000", "tab\there", "??=why??/")
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on this machine")
    program = tmp_path / "names.cc"
    program.write_text("#include <cstdio>\n" + _c_class_names(names)
                       + "int main() { for (const char* name : kClassNames) std::puts(name); }\n")
    subprocess.run([compiler, "-std=c++17", str(program), "-o", str(tmp_path / "names")], check=True, timeout=120)
    ran = subprocess.run([str(tmp_path / "names")], capture_output=True, check=True, timeout=60)
    assert ran.stdout.decode("utf-8").splitlines() == list(names)


def test_main_cc_quantises_an_input_beyond_the_calibrated_range_to_the_nearest_int8(tmp_path):
    """The model's int8 input covers the range calibrated on training samples, which can end short of the data's
    (an accelerometer's counts reached 32,104, the input 29,342): main.cc's QuantizeInput saturates such a value, as
    edgesearch does when it feeds the interpreter, where a plain cast wrapped it around to a large negative int8."""
    from search.export import _c_quantize_input
    from search.stages.tflite import _as_input

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on this machine")
    scale, zero = 161.21971, -55
    values = np.random.default_rng(0).uniform(-40000, 40000, 400).astype(np.float32)
    program = tmp_path / "quantise.cc"
    program.write_text("#include <cmath>\n#include <cstdint>\n#include <cstdio>\n" + _c_quantize_input(scale, zero)
                       + "int main() { float x; while (std::scanf(\"%f\", &x) == 1) std::printf(\"%d\\n\", "
                       "QuantizeInput(x)); }\n")
    subprocess.run([compiler, "-std=c++17", str(program), "-o", str(tmp_path / "quantise")], check=True, timeout=120)
    ran = subprocess.run([str(tmp_path / "quantise")], input=" ".join(f"{v:.9g}" for v in values).encode(),
                         capture_output=True, check=True, timeout=60)
    expected = np.clip(np.round(values / np.float32(scale)) + zero, -128, 127)
    assert [int(q) for q in ran.stdout.split()][:len(values)] == expected.astype(int).tolist()
    assert expected.min() == -128 and expected.max() == 127  # values beyond the range on both sides
    # exact ties round away from zero, as std::lround does; and so does the host when it feeds the interpreter
    # (it rounded them to even, so a recorded accuracy could differ from the board's)
    ties = (np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 40.5], dtype=np.float32) * np.float32(scale))
    ran = subprocess.run([str(tmp_path / "quantise")], input=" ".join(f"{v:.9g}" for v in ties).encode(),
                         capture_output=True, check=True, timeout=60)
    assert [int(q) for q in ran.stdout.split()] == [1 + zero, -1 + zero, 2 + zero, -2 + zero, 3 + zero, -3 + zero,
                                                     41 + zero]
    details = {"dtype": np.int8, "shape": np.array([1, len(ties)]),
               "quantization_parameters": {"scales": np.array([scale], np.float32), "zero_points": np.array([zero])}}
    assert _as_input(details, ties[None, None, :])[0, 0].tolist() == [int(q) for q in ran.stdout.split()]


def test_without_a_shipping_stage_the_runtime_the_search_timed_ships(tmp_path):
    """On 32x32 images at width 2 untuned TVM takes many times onnxruntime's time: the search judges the candidate
    on onnxruntime, and with no shipping stage (TINY has none) that is what ships, verified against both recorded
    accuracies."""
    from search.spec import SearchSpace, SearchSpec
    from search.workers import run_search
    from tests.search.conftest import TINY

    rng = np.random.default_rng(0)
    data = tmp_path / "rgb.npz"
    y = np.arange(60) % 2  # class 1 brighter: a model that learns nothing is infeasible, and has no front to export
    np.savez(data, x=rng.random((60, 3, 32, 32), dtype=np.float32) + y[:, None, None, None].astype(np.float32), y=y)
    wide = SearchSpace(precision=("fp32",), pruning=("structured",), sparsity=(0.0, 0.0), temperature=(1.0, 1.0),
                       alpha=(1.0, 1.0), width=(2.0, 2.0))
    storage, lines = default_storage(tmp_path), []
    run_search(SearchSpec(name="rgb", dataset=str(data), trials=1, workers=1, space=wide, recipes=False,
                          budget=dataclasses.replace(TINY, epochs=20), latency_budget_ms=100),  # 2 are 2 steps
               tmp_path, storage_url=storage, report=lines.append)
    assert any("ms (measured on onnxruntime)" in line for line in lines)  # the trial's line says so
    trial = load_study("rgb", storage).trials[0]
    assert trial.user_attrs["searched_runtime"] == "onnxruntime"
    assert trial.user_attrs["metric:latency_ms_p90"] == trial.user_attrs["metric:ort_latency_ms_p90"]
    card = export_search("rgb", tmp_path / "out", storage_url=storage, runs_dir=tmp_path, register=False)
    assert card["runtime"] == "onnxruntime"
    assert card["verification"]["onnxruntime_test_accuracy"] == trial.user_attrs["metric:accuracy_test"][0]
