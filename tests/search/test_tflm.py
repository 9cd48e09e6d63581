"""Microcontroller profiles ship TensorFlow Lite Micro: a real search on cortex-m4, its export, the arena."""

import dataclasses
import hashlib
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from hardware_targets import load_profile
from hardware_targets.graph import graph_precision
from hardware_targets.profile import arithmetic
from objectives.accuracy import accuracy
from search.cli import main
from search.spec import SearchSpace, SearchSpec
from search.stages.tflite import allocates, arena_bytes, interpreter, predict_tflm
from search.study import default_storage, load_study, rows
from search.tracking import default_tracking_uri
from search.workers import run_search
from tests.search.conftest import DIGITS_VALUES, TINY

SMALL = SearchSpace(precision=("fp32", "int8-ptq", "int8-qat"), pruning=("unstructured", "structured"),
                    sparsity=(0.0, 0.5), width=(0.25, 0.5))


@pytest.fixture(scope="module")
def m4_search(tmp_path_factory):
    """A Cortex-M4 board added as a user adds one: a profile file of its own (the shipped one, renamed)."""
    runs = tmp_path_factory.mktemp("m4")
    board = runs.parent / "my-m4.yaml"
    board.write_text(Path(load_profile("cortex-m4").source).read_text().replace("name: cortex-m4", "name: my-m4"))
    spec = SearchSpec(name="m4", dataset="digits", target=str(board), trials=2, workers=2, budget=TINY,
                      space=SMALL, latency_budget_ms=50, recipes=False)
    lines = []
    outcome = run_search(spec, runs, storage_url=default_storage(runs), report=lines.append,
                         tracking_uri=default_tracking_uri(runs))
    return spec, outcome, runs, lines


def test_a_cortex_m4_search_measures_accuracy_on_the_tflite(m4_search, digits):
    spec, outcome, runs, lines = m4_search
    assert not any("int8-qat left out" in ln for ln in lines)  # converted from its trained weights
    assert any("the front ships as searched (tflite-micro)" in ln for ln in lines)
    done = [r for r in outcome.rows if r.state == "COMPLETE"]
    assert done, lines
    for row in done:
        trial = load_study(spec.name, default_storage(runs)).trials[row.number]
        tflite = trial.user_attrs["artifacts"]["tflite"]
        # the search's accuracy is the .tflite's in the TFLM interpreter, recomputed here from the file
        assert row.value("accuracy") == accuracy(predict_tflm(tflite, digits.x_val), digits.y_val)
        assert row.metrics["tflm_arena_bytes"][2] == "measured" and row.metrics["latency_ms_p90"][2] == "emulated"
        assert row.metrics["size_bytes"][2] == "measured"  # counted in the .tflite, not derived from the ONNX graph
        m4 = load_profile("cortex-m4")
        assert row.value("ram_bytes") == row.value("tflm_arena_bytes") + m4.runtime_ram_overhead_bytes
        assert row.value("flash_bytes") == row.value("tflite_bytes") + m4.runtime_flash_bytes
        if row.knobs["precision"].startswith("int8"):  # fully integer: int8 in, int8 out
            assert np.dtype(interpreter(tflite).get_input_details(0)["dtype"]) == np.int8
        # what a board's timing of a bare file is taken to be, read from its weights (calibrate --measured)
        for artifact in (tflite, trial.user_attrs["artifacts"]["onnx"]):
            assert graph_precision(artifact) == arithmetic(row.knobs["precision"]), artifact
    from hardware_targets.backends.emulated import EmulatedBackend
    from hardware_targets.graph import op_costs, tflite_op_costs

    row = done[0]
    artifacts = load_study(spec.name, default_storage(runs)).trials[row.number].user_attrs["artifacts"]
    ops, onnx_ops = tflite_op_costs(artifacts["tflite"]), op_costs(artifacts["onnx"])
    # two parsers, two files of the same trained model: the same multiply-accumulates
    assert sum(o.macs for o in ops if o.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")) == \
        sum(o.macs for o in onnx_ops if o.op in ("Conv", "Gemm"))
    # latency is emulated over what TFLM runs: each operator of the flatbuffer pays a dispatch, the converter's
    # PAD and RESHAPE too, which a compiler would have fused
    assert len(ops) > len(onnx_ops)
    onnx_figure = EmulatedBackend(load_profile("cortex-m4")).measure(None, artifacts["onnx"], row.knobs["precision"],
                                                                      None, 1)["latency_ms_p90"].value
    assert row.value("latency_ms_p90") > onnx_figure
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri(runs))
    experiment = client.get_experiment_by_name(spec.name)
    for row in done:  # the flatbuffer that ships is in the candidate's MLflow run, beside its graph
        (run,) = client.search_runs([experiment.experiment_id], f"tags.`edgesearch.trial` = '{row.number}'")
        assert {"model/model.tflite", "model/model.onnx"} <= {a.path for a in client.list_artifacts(run.info.run_id,
                                                                                                    "model")}
    # the search's run says what its emulated figures are worth, as its log did
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["emulator"] == "the profile's own factors (not calibrated)"


def test_the_export_is_something_a_board_can_flash(m4_search, digits, tmp_path, capsys):
    spec, outcome, runs, _ = m4_search
    if outcome.best is None:
        pytest.fail("the cortex-m4 search found no feasible candidate to export")
    out = tmp_path / "board"
    # through the command line, as a user exports it
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(out), "--no-mlflow"]) == 0
    assert "verified: test accuracy in the TFLite Micro interpreter" in capsys.readouterr().out
    card = json.loads((out / "model_card.json").read_text())
    for name in ("model.tflite", "model_data.h", "model_data.cc", "main.cc", "model.onnx", "model_card.json",
                 "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    assert card["runtime"] == "tflite-micro" and card["target_profile"] == card["measured_on"] == "my-m4"
    tflite = (out / "model.tflite").read_bytes()
    assert hashlib.sha256(tflite).hexdigest() == card["artifacts"]["model.tflite"]
    # flash holds the file as is; gzip-compressed is only how it travels
    assert card["metrics"]["tflite_file_bytes"]["value"] == len(tflite)
    assert 0 < card["metrics"]["tflite_gzip_bytes"]["value"] < len(tflite)
    assert card["gzip_copies"] == {} and not list(out.glob("*.gz")) and "no compressed copy" in (
        out / "MODEL_CARD.md").read_text()
    # the C array holds the flatbuffer byte for byte, aligned as TFLM reads it in place
    source = (out / "model_data.cc").read_text()
    assert "alignas(16)" in source and f"g_model_len = {len(tflite)};" in source
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", source)) == tflite
    # the card's test accuracy is what the TFLM interpreter gives on the shipped file
    predicted = predict_tflm(out / "model.tflite", digits.x_test)
    assert card["metrics"]["accuracy_test"]["value"] == accuracy(predicted, digits.y_test)
    # and its predictions by class, counted here from the same file
    for true, row in enumerate(card["per_class_test"]["confusion_matrix"]):
        assert row == [int(((digits.y_test == true) & (predicted == p)).sum()) for p in range(10)]
    assert card["per_class_test"]["runtime"] == "TFLite Micro interpreter"
    assert "Confusion matrix (rows: true class, columns: predicted class)" in (out / "MODEL_CARD.md").read_text()
    # the arena is what the interpreter needed: it allocates in that, not in 10% less
    arena = card["tflm"]["arena_bytes"]
    assert arena == arena_bytes(out / "model.tflite")
    assert allocates(out / "model.tflite", arena) and not allocates(out / "model.tflite", int(arena * 0.9))
    program = (out / "main.cc").read_text()
    assert f"kTensorArenaSize = {card['tflm']['arena_bytes_aligned']};" in program
    assert card["tflm"]["arena_bytes_aligned"] % 16 == 0 and "AddConv2D" in program and "tflm" in card
    assert "its CMSIS-NN kernels" in program  # the board's file names them (tflm_kernels), not its name's prefix
    assert "TFLite Micro interpreter" in (out / "MODEL_CARD.md").read_text()
    assert "build and flash it with the board's toolchain" in (out / "MODEL_CARD.md").read_text()
    assert card["mlflow_run_id"] is None and "MLflow run: none (exported without MLflow" in (
        out / "MODEL_CARD.md").read_text()
    # channel-last, as TFLite computes: no layout change on the device
    assert {k: v for k, v in card["input"].items() if k != "quantization"} == {
        "shape": [1, 8, 8, 1], "dtype": card["tflm"]["input_dtype"], "layout": "NHWC", "values": DIGITS_VALUES}
    assert f"// Its values as in training: {DIGITS_VALUES}." in program  # raw or scaled: what the sensor code feeds
    # the sketch takes exactly one input and allocates the arena once, however often it is called
    assert "constexpr int kInputLength = 64;" in program and "if (input_len != kInputLength) return -2;" in program
    # and registers its operators once: a resolver asked again for an operator it holds logs an error each call
    assert program.count("AllocateTensors()") == 1 and "static tflite::MicroInterpreter* const interpreter" in program
    assert all(program.count(f"resolver.{method}();") == 1 for method in re.findall(r"resolver\.(\w+)\(\);", program))
    if card["tflm"]["input_dtype"] == "int8":  # how to quantise the input, with the model's own scale and zero
        assert re.search(r"int8, q = round\(x / [0-9.e-]+\) [+-] [0-9]+;", program)
        quant = interpreter(out / "model.tflite").get_input_details(0)["quantization_parameters"]
        assert card["input"]["quantization"] == {"scale": float(quant["scales"][0]),
                                                 "zero_point": int(quant["zero_points"][0])}
        assert "inline int8_t QuantizeInput(float x)" in program
    else:
        assert "quantization" not in card["input"] and "QuantizeInput" not in program
    assert "[1, 8, 8, 1] in NHWC order" in program and not {"TRANSPOSE", "RESHAPE"} & set(card["tflm"]["ops"])
    _the_self_test_holds_what_the_interpreter_computes(out, card, digits, tmp_path)


def _the_self_test_holds_what_the_interpreter_computes(out: Path, card: dict, digits, tmp_path: Path) -> None:
    """The export's self_test() checks a port against the interpreter's outputs: its data file, compiled and read
    back, holds test samples of each class as the model takes them, and the outputs TFLM gives for exactly those."""
    import shutil
    import subprocess

    from search.stages.tflite import model_inputs, tflm_outputs

    program = (out / "main.cc").read_text()
    assert "#ifdef EDGESEARCH_SELF_TEST\n#include \"self_test_data.h\"" in program and "int self_test() {" in program
    assert "-DEDGESEARCH_SELF_TEST" in (out / "MODEL_CARD.md").read_text()
    picked = card["self_test"]["test_samples"]
    assert card["self_test"]["file"] == "self_test_data.h" and card["artifacts"]["self_test_data.h"]
    # one of each class (digits' inputs are small), each one the interpreter classifies right
    assert sorted(digits.y_test[picked]) == list(range(10)) == sorted(card["self_test"]["classes"])
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on this machine")
    dump = tmp_path / "dump.cc"
    dump.write_text('#include <cstdio>\n#include "self_test_data.h"\nint main() {\n'
                    "  for (int s = 0; s < kSelfTestCount; ++s) {\n"
                    '    for (auto v : kSelfTestInputs[s]) std::printf("%.9g ", double(v));\n'
                    '    std::printf("| %d |", kSelfTestClasses[s]);\n'
                    '    for (auto v : kSelfTestOutputs[s]) std::printf(" %.9g", double(v));\n'
                    '    std::printf("\\n");\n  }\n}\n')
    subprocess.run([compiler, "-std=c++17", "-Wall", "-Werror", f"-I{out}", str(dump), "-o", str(tmp_path / "dump")],
                   check=True, timeout=120)
    lines = subprocess.run([str(tmp_path / "dump")], capture_output=True, text=True, check=True,
                           timeout=60).stdout.splitlines()
    inputs = model_inputs(out / "model.tflite", digits.x_test[picked])
    outputs = tflm_outputs(out / "model.tflite", inputs)
    assert len(lines) == len(picked)
    for line, given, computed, label in zip(lines, inputs, outputs, digits.y_test[picked]):
        values, cls, outs = line.split("|")
        assert np.array(values.split(), dtype=np.float64).tolist() == given.reshape(-1).astype(np.float64).tolist()
        assert np.array(outs.split(), dtype=np.float64).tolist() == computed.astype(np.float64).tolist()
        assert int(cls) == int(computed.argmax()) == label


@pytest.mark.slow  # a second Cortex-M4 search; TFLite Micro runs by default in the test above
def test_a_candidate_whose_arena_exceeds_the_ram_is_infeasible(m4_search, tmp_path):
    """The board's RAM set just under what the best candidate needs (its measured arena plus the runtime's
    overhead): the same candidate, searched again there, is infeasible on RAM."""
    spec, outcome, runs, _ = m4_search
    best = outcome.best
    board = yaml.safe_load(open(load_profile("cortex-m4").source).read())
    board.update(name="m4-short-of-ram", sram_bytes=int(best.value("ram_bytes")) - 1)
    path = tmp_path / "m4-short-of-ram.yaml"
    path.write_text(yaml.safe_dump(board))
    k = best.knobs
    one = SearchSpace(precision=(k["precision"],), pruning=(k["pruning"],), sparsity=(k["sparsity"],) * 2,
                      temperature=(k["temperature"],) * 2, alpha=(k["alpha"],) * 2, width=(k["width"],) * 2)
    tight = SearchSpec(name="short", dataset="digits", target=str(path), trials=1, workers=1, budget=TINY, space=one,
                       latency_budget_ms=50, recipes=False)
    run_search(tight, runs, storage_url=default_storage(runs), report=lambda line: None)
    study = load_study("short", default_storage(runs))
    row = rows(study)[0]
    assert not row.feasible and study.trials[0].constraints["fits_ram"] > 0
    # screening converted the untrained graph of the same shapes: its arena is the trained one's, so none trains
    assert row.stopped == "screened" and row.value("tflm_arena_bytes") == best.value("tflm_arena_bytes")
    assert all(r.stopped == "screened" for r in rows(study))


def test_an_export_to_another_board_emulates_the_same_tflite_there(m4_search, tmp_path, capsys):
    """The .tflite the search measured on its board, exported for another TFLite Micro board: its latency, energy,
    RAM and flash are that board's (emulated and estimated there, none carried over), its accuracy and arena the
    file's own; a board it does not fit is refused before anything is written, and one where it misses the
    search's latency budget says so."""
    spec, outcome, runs, _ = m4_search
    if outcome.best is None:
        pytest.fail("the cortex-m4 search found no feasible candidate to export")
    row = outcome.best
    m7 = load_profile("cortex-m7")
    out = tmp_path / "m7"
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(out), "--no-mlflow",
                 "--target", "cortex-m7"]) == 0, capsys.readouterr().err
    card = json.loads((out / "model_card.json").read_text())
    assert card["target_profile"] == "cortex-m7" and card["measured_on"] == "my-m4" and card["runtime"] == "tflite-micro"
    figures = card["metrics"]
    assert figures["latency_ms_p90"]["provenance"] == "emulated" and figures["energy_mj"]["provenance"] == "emulated"
    # the M7 at 280 MHz with twice the M4's multiply-accumulates per cycle: faster than the M4 figure the search has
    assert figures["latency_ms_p90"]["value"] < row.value("latency_ms_p90")
    assert figures["latency_ms_p90"]["value"] != pytest.approx(row.value("latency_ms_p90"))
    assert figures["ram_bytes"]["value"] == card["tflm"]["arena_bytes"] + m7.runtime_ram_overhead_bytes
    assert figures["flash_bytes"]["value"] == figures["tflite_file_bytes"]["value"] + m7.runtime_flash_bytes
    assert figures["accuracy_test"]["value"] == row.value("accuracy_test") and "over_budget_on_target" not in card
    board = tmp_path / "boards"
    board.mkdir()
    m4 = Path(load_profile("cortex-m4").source).read_text()
    # a board with too little RAM for the arena: refused with what it needs, nothing written
    (board / "tiny.yaml").write_text(m4.replace("name: cortex-m4", "name: tiny").replace(
        "sram_bytes: 262144", f"sram_bytes: {card['tflm']['arena_bytes'] // 2}"))
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(tmp_path / "tiny"),
                 "--no-mlflow", "--target", str(board / "tiny.yaml")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"needs [\d,]+ KiB of RAM on tiny \(estimated\), which has [\d,]+ KiB", err), err
    assert not (tmp_path / "tiny").exists()
    # a board that takes 20 ms to dispatch an operator: over the search's 50 ms budget there, as the card and the
    # command say
    (board / "slow.yaml").write_text(m4.replace("name: cortex-m4", "name: slow").replace("op_overhead_us: 20 ",
                                                                                        "op_overhead_us: 20000 "))
    slow = tmp_path / "slow"
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(slow), "--no-mlflow",
                 "--target", str(board / "slow.yaml")]) == 0
    said = capsys.readouterr().out
    card = json.loads((slow / "model_card.json").read_text())
    assert card["metrics"]["latency_ms_p90"]["value"] > spec.latency_budget_ms
    assert "over the search's budget of 50 ms" in card["over_budget_on_target"]
    assert f"note: {card['over_budget_on_target']}" in said
    assert card["over_budget_on_target"] in (slow / "MODEL_CARD.md").read_text()


def test_a_worker_keeps_its_converter_and_replaces_one_that_died(digits, tmp_path):
    """A candidate converted by the kept converter gives the same flatbuffer as a cold one; a failed conversion
    leaves the converter serving; a converter killed between candidates costs the next one a restart, not its result."""
    import os
    import signal

    from search.candidate import Candidate
    from search.models import build_model
    from search.stages import tflite
    from search.stages.tflite import convert_tflite, converter_python

    candidate = Candidate(precision="fp32", width=0.25, budget=TINY)
    model = build_model(digits.sample_shape, digits.num_classes, 0.25).eval()
    cold = convert_tflite(model, candidate, digits, tmp_path / "cold.tflite").read_bytes()
    pid = tflite._converters[converter_python()].proc.pid
    assert convert_tflite(model, candidate, digits, tmp_path / "warm.tflite").read_bytes() == cold
    error = tflite._convert_program(tmp_path / "missing.pt2", tmp_path / "x.tflite", "fp32", tmp_path / "missing.npy")
    assert "missing.pt2" in error and tflite._converters[converter_python()].proc.pid == pid
    os.kill(pid, signal.SIGKILL)
    error = tflite._convert_program(tmp_path / "missing.pt2", tmp_path / "x.tflite", "fp32", tmp_path / "missing.npy")
    assert "missing.pt2" in error and tflite._converters[converter_python()].proc.pid != pid


def expected_classes(model, x) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def test_the_tflite_takes_a_frame_channel_last_as_a_camera_gives_it(tmp_path):
    """A 3-channel image model converted for TFLite Micro takes (1, H, W, C), the order TFLite computes in: the
    device runs no TRANSPOSE first, and its answer on a frame as it comes from the camera is the torch model's on
    the same frame."""
    import torch

    from search.candidate import Candidate
    from search.data import load_npz
    from search.models import build_model
    from search.stages.tflite import convert_tflite, op_names

    rng = np.random.default_rng(0)
    frames = rng.normal(size=(40, 12, 12, 3)).astype(np.float32)  # height, width, channel
    labels = np.arange(40) % 4
    np.savez(tmp_path / "cam.npz", x_train=frames[:32], y_train=labels[:32], x_test=frames[32:], y_test=labels[32:],
             layout="NHWC")
    data = load_npz(tmp_path / "cam.npz")
    model = build_model(data.sample_shape, data.num_classes, 0.5).eval()
    path = convert_tflite(model, Candidate(precision="fp32", width=0.5, budget=TINY), data, tmp_path / "m.tflite")
    assert "TRANSPOSE" not in op_names(path)
    it = interpreter(path)
    assert [int(d) for d in it.get_input_details(0)["shape"]] == [1, 12, 12, 3]
    for frame in frames[32:]:
        it.set_input(frame[None], 0)
        it.invoke()
        with torch.no_grad():
            expected = model(torch.from_numpy(np.ascontiguousarray(np.moveaxis(frame, -1, 0))[None])).numpy()
        np.testing.assert_allclose(it.get_output(0).reshape(-1), expected.reshape(-1), rtol=1e-4, atol=1e-5)
    assert (predict_tflm(path, data.x_test) == expected_classes(model, data.x_test)).all()
    # fully integer int8 too: calibrated on the frames in the order it takes them
    path = convert_tflite(model, Candidate(precision="int8-ptq", width=0.5, budget=TINY), data, tmp_path / "q.tflite")
    details = interpreter(path).get_input_details(0)
    assert [int(d) for d in details["shape"]] == [1, 12, 12, 3] and np.dtype(details["dtype"]) == np.int8
    assert "TRANSPOSE" not in op_names(path)


def converted_qat(data, tmp_path):
    """A trained model fine-tuned with QAT, converted: (QAT model, .tflite path, its and the .tflite's classes)."""
    import torch

    from search.candidate import Candidate
    from search.models import build_model
    from search.stages.compress import quantization_aware_finetune
    from search.stages.tflite import convert_tflite
    from search.stages.train import fit

    candidate = Candidate(precision="int8-qat", width=0.5, budget=TINY)
    torch.manual_seed(0)
    model = build_model(data.sample_shape, data.num_classes, 0.5)
    fit(model, data, 4, seed=0)
    qat = quantization_aware_finetune(model, candidate, data)
    path = convert_tflite(qat, candidate, data, tmp_path / "qat.tflite")
    assert np.dtype(interpreter(path).get_input_details(0)["dtype"]) == np.int8
    with torch.no_grad():
        trained = qat(torch.from_numpy(data.x_test)).argmax(1).numpy()
    shipped = predict_tflm(path, data.x_test)
    assert accuracy(trained, data.y_test) > 0.5  # a model that learned, so agreeing means something
    assert (shipped == trained).mean() >= 0.95
    assert abs(accuracy(shipped, data.y_test) - accuracy(trained, data.y_test)) <= 0.03
    return candidate, path


def test_a_qat_model_converts_to_a_fully_integer_tflite_that_computes_what_qat_trained(tmp_path, digits):
    """TFLite Micro's converter quantizes for itself and cannot take FX's fake-quant modules: it gets the QAT
    model's fake-quantised weights, and its .tflite must classify as the QAT model does in torch."""
    from search.models import build_model
    from search.stages.tflite import constant_bytes, convert_tflite
    from search.stages.train import fit

    candidate, path = converted_qat(digits, tmp_path)
    # in flash its weights take what PTQ's of the same shapes take (both a scale per channel in the .tflite), and
    # a quarter or so of fp32's (int32 biases beside float ones)
    same_shapes = build_model(digits.sample_shape, digits.num_classes, 0.5)
    fit(same_shapes, digits, 1, seed=1)  # trained: untrained batch norms fold into zero biases, which the file shares
    ptq, fp32 = (convert_tflite(same_shapes, dataclasses.replace(candidate, precision=p), digits, tmp_path / f"{p}.tflite")
                 for p in ("int8-ptq", "fp32"))
    assert constant_bytes(path) == constant_bytes(ptq) < constant_bytes(fp32) / 3
    for tflite in (path, ptq, fp32):
        _assert_flashes_no_names_and_aligned_weights(tflite)


def _assert_flashes_no_names_and_aligned_weights(path):
    """The converter named each tensor by its module path (4 KB of a 25 KB model), all of it flashed and never
    read; TFLite's schema wants each weight buffer 16-byte aligned in the file."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    data = path.read_bytes()
    assert b"torch.ao" not in data and b"search.stages" not in data and b"serving_default" not in data
    model = schema.Model.GetRootAsModel(data, 0)
    start = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    weights = [model.Buffers(i).DataAsNumpy() for i in range(model.BuffersLength())]
    offsets = [w.__array_interface__["data"][0] - start for w in weights if isinstance(w, np.ndarray) and w.size]
    assert offsets and all(offset % 16 == 0 for offset in offsets), offsets


def test_a_qat_signal_model_converts_planar_with_the_relus_its_fused_convolutions_apply(tmp_path, mnist1d):
    """A 1-D QAT model's convolutions are fused modules (``ConvReLU1d``, a Conv1d subclass that applies a ReLU):
    converted planar, each keeps its ReLU. Taken for a plain Conv1d, a 20-class search's .tflite scored 0.03 where
    the QAT model scored 0.99."""
    from hardware_targets.graph import tflite_op_costs

    _, path = converted_qat(mnist1d, tmp_path)
    assert "TRANSPOSE" not in {op.op for op in tflite_op_costs(path)}


def int32_constants(path) -> list[np.ndarray]:
    """The int32 constant tensors (the biases) of a .tflite, as the flatbuffer stores them."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(path).read_bytes(), 0))
    return [np.frombuffer(bytes(model.buffers[t.buffer].data), np.int32) for g in model.subgraphs for t in g.tensors
            if t.type == schema.TensorType.INT32 and model.buffers[t.buffer].data is not None]


def test_int8_keeps_the_accuracy_of_signals_stored_in_raw_sensor_counts(tmp_path, mnist1d):
    """Signals stored as int16 counts (an accelerometer's, in the tens of thousands) train a first convolution whose
    batch-norm-folded weights are near 1e-4. The converter's default floor on every scale (2**-12) quantised them
    to 0 and +-1: a 5-class accelerometer search's int8 candidates scored 0.21 where fp32 scored 1.00. A dead
    channel (zero weights) keeps its bias: the scale floor that replaces that one is relative, so the int32 bias
    fits (with no floor at all, the bias's scale fell to 3e-9 and the bias was clamped)."""
    import torch

    from search.candidate import Candidate
    from search.data import load_npz
    from search.models import build_model
    from search.stages.tflite import convert_tflite
    from search.stages.train import fit

    counts = {k: getattr(mnist1d, k) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    for k in ("x_train", "x_val", "x_test"):
        counts[k] = np.clip(np.round(counts[k] * 4000), -32768, 32767).astype(np.int16)
    np.savez(tmp_path / "counts.npz", **counts)
    data = load_npz(tmp_path / "counts.npz")
    assert np.abs(data.x_train).max() > 10000
    torch.manual_seed(0)
    model = build_model(data.sample_shape, data.num_classes, 0.5)
    fit(model, data, 6, seed=0)
    model.eval()
    with torch.no_grad():  # a dead channel: zero weights, a large shift, read by nothing after it
        model.features[3].weight[0].zero_()
        model.features[4].bias[0] = 50.0
        model.features[6].weight[:, 0].zero_()
    trained = expected_classes(model, data.x_test)
    assert accuracy(trained, data.y_test) > 0.5  # a model that learned, so agreeing means something
    path = convert_tflite(model, Candidate(precision="int8-ptq", width=0.5, budget=TINY), data, tmp_path / "q.tflite")
    shipped = predict_tflm(path, data.x_test)
    assert (shipped == trained).mean() >= 0.9
    assert abs(accuracy(shipped, data.y_test) - accuracy(trained, data.y_test)) <= 0.05
    assert all(np.abs(bias.astype(np.int64)).max() < 2**31 - 1 for bias in int32_constants(path))  # none clamped


def test_a_signal_model_converts_to_its_convolutions_and_no_layout_changes(tmp_path):
    """A 2-channel signal model, float and int8: batch norms folded (the converter wrote an unfolded 1-D one as a
    MUL and an ADD between TRANSPOSEs: 53 operators for 7 convolutions, each a dispatch on the board) and converted
    planar, so the flatbuffer holds no TRANSPOSE, takes the signal channel-last and computes what torch does."""
    import torch

    from search.candidate import Candidate
    from search.data import load_npz
    from search.models import build_model
    from hardware_targets.graph import tflite_op_costs
    from search.stages.tflite import convert_tflite

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 2, 64)).astype(np.float32), np.arange(40) % 3
    np.savez(tmp_path / "sig.npz", x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    data = load_npz(tmp_path / "sig.npz")
    model = build_model(data.sample_shape, data.num_classes, 0.5).eval()
    with torch.no_grad():  # trained-looking statistics, so no batch norm is the identity
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            for tensor, low, high in ((norm.running_mean, -1, 1), (norm.running_var, 0.5, 2),
                                      (norm.weight, 0.5, 1.5), (norm.bias, -0.5, 0.5)):
                tensor.copy_(torch.from_numpy(rng.uniform(low, high, tensor.shape).astype(np.float32)))
    candidate = Candidate(precision="fp32", width=0.5, budget=TINY)
    path = convert_tflite(model, candidate, data, tmp_path / "sig.tflite")
    ops = [op.op for op in tflite_op_costs(path)]
    convolutions = sum(op in ("CONV_2D", "DEPTHWISE_CONV_2D") for op in ops)
    assert convolutions == sum(isinstance(m, torch.nn.Conv1d) for m in model.modules())
    assert not {"MUL", "ADD", "TRANSPOSE"} & set(ops), ops
    assert len(ops) <= convolutions + 5, ops  # the input's RESHAPE, PADs of stride 2, MEAN, the head
    it = interpreter(path)
    assert [int(d) for d in it.get_input_details(0)["shape"]] == [1, 64, 2]
    for signal in x[32:]:
        it.set_input(np.ascontiguousarray(signal.T)[None], 0)  # channel-last, as an interleaved sensor buffer
        it.invoke()
        with torch.no_grad():
            expected = model(torch.from_numpy(signal)[None]).numpy()
        np.testing.assert_allclose(it.get_output(0).reshape(-1), expected.reshape(-1), rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())  # the caller's model is left as it was
    assert (predict_tflm(path, data.x_test) == expected_classes(model, data.x_test)).all()
    path = convert_tflite(model, dataclasses.replace(candidate, precision="int8-ptq"), data, tmp_path / "q.tflite")
    details = interpreter(path).get_input_details(0)
    assert [int(d) for d in details["shape"]] == [1, 64, 2] and np.dtype(details["dtype"]) == np.int8
    assert not {"MUL", "ADD", "TRANSPOSE"} & {op.op for op in tflite_op_costs(path)}


def test_a_1d_layer_with_no_2d_twin_is_refused_by_name():
    from torch import nn

    from search.errors import CandidateError
    from search.stages.tflite import as_planar

    with pytest.raises(CandidateError, match=r"no 2-D twin for MaxPool1d \(1\)"):
        as_planar(nn.Sequential(nn.Conv1d(2, 4, 3), nn.MaxPool1d(2)))


def test_the_arena_of_a_long_signal_is_found_where_its_activations_dwarf_its_weights(tmp_path):
    """One second of 16 kHz audio at width 1.5: megabytes of activations beside kilobytes of weights. The arena
    is measured (a board's RAM then rules the candidate out) instead of the interpreter failing to allocate."""
    from search.candidate import Candidate
    from search.data import load_npz
    from search.models import build_model
    from search.stages.tflite import convert_tflite, unplanned_tensor_bytes

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 1, 16000)).astype(np.float32), np.arange(8) % 2
    np.savez(tmp_path / "long.npz", x_train=x[:4], y_train=y[:4], x_val=x[4:6], y_val=y[4:6], x_test=x[6:],
             y_test=y[6:])
    data = load_npz(tmp_path / "long.npz")
    model = build_model(data.sample_shape, data.num_classes, 1.5).eval()
    path = convert_tflite(model, Candidate(precision="fp32", width=1.5, budget=TINY), data, tmp_path / "long.tflite")
    arena = arena_bytes(path)
    assert arena > max(10 * path.stat().st_size, 1 << 20)  # more than an arena sized from the file would hold
    assert arena <= unplanned_tensor_bytes(path) + (1 << 20)  # the planner's reuse, plus its own structures
    assert allocates(path, arena) and not allocates(path, arena - 1)


@pytest.mark.slow  # ~15 s; by default test_calibration fits a profile from the command line and applies it
def test_an_export_to_a_board_calibrated_on_its_own_timings_is_emulated_with_them(m4_search, tmp_path, capsys):
    """A user times the exported model on their own M7 board and fits that board's emulator to it: the next export
    for the board predicts the timing, and both model cards say which factors emulated their figures."""
    spec, outcome, runs, lines = m4_search
    if outcome.best is None:
        pytest.fail("the cortex-m4 search found no feasible candidate to export")
    # the board named as the user named it (here their own profile file), by the search and by its status later
    assert f"latency and energy emulated for {spec.target} with the profile's own factors (not calibrated)" in lines
    assert main(["--runs-dir", str(runs), "status", spec.name]) == 0
    assert f"latency and energy emulated for {spec.target} with the profile's own factors (not calibrated)\n" in \
        capsys.readouterr().out
    board = tmp_path / "board"
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(board)]) == 0  # registered
    card = json.loads((board / "model_card.json").read_text())
    assert card["emulator"] == "the profile's own factors (not calibrated)"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri(runs), registry_uri=default_tracking_uri(runs))
    version = client.get_model_version(f"edgesearch-{spec.name}", card["registered_version"])
    assert version.tags["emulator"] == card["emulator"]
    assert "- emulated latency and energy: the profile's device model with the profile's own factors (not " \
           "calibrated)" in (board / "MODEL_CARD.md").read_text()
    my_m7 = tmp_path / "my-m7.yaml"
    my_m7.write_text(Path(load_profile("cortex-m7").source).read_text().replace("name: cortex-m7", "name: my-m7"))
    # exported for the user's M7 board, whose card says how to fit the board to a timing of it; done as it says
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(tmp_path / "board7"),
                 "--no-mlflow", "--target", str(my_m7)]) == 0
    card7 = json.loads((tmp_path / "board7" / "model_card.json").read_text())
    assert card7["calibrate_with"] == f"edgesearch calibrate --target {my_m7} --measured FILE"
    assert f"then `{card7['calibrate_with']}`" in (tmp_path / "board7" / "MODEL_CARD.md").read_text()
    (tmp_path / "timings.csv").write_text("model,latency_ms\nboard7,4.5\n")  # the export's folder, beside the CSV
    capsys.readouterr()
    command = shlex.split(card7["calibrate_with"].replace("FILE", str(tmp_path / "timings.csv")))
    assert main(["--runs-dir", str(runs), *command[1:]]) == 0
    assert re.search(rf"^board7 +{card['knobs']['precision']} +280 +4.5 ", capsys.readouterr().out, re.M)
    m7_board = tmp_path / "m7"
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(m7_board), "--no-mlflow",
                 "--target", str(my_m7)]) == 0
    m7_card = json.loads((m7_board / "model_card.json").read_text())
    assert m7_card["metrics"]["latency_ms_median"]["value"] == pytest.approx(4.5, rel=1e-6)
    assert m7_card["metrics"]["latency_ms_median"]["provenance"] == "emulated"
    assert m7_card["emulator"].startswith(f"factors fitted to 1 timing(s) of the board ({(tmp_path / 'timings.csv')}"
                                          "; one timing: no error measured on another)")
    assert m7_card["emulator"] in (m7_board / "MODEL_CARD.md").read_text()


def test_a_search_is_not_resumed_with_other_emulator_factors_than_its_trials_had(m4_search, tmp_path, capsys):
    """Calibrating a board between a search and its resume would put figures of two device models on one front."""
    spec, outcome, runs, _ = m4_search
    (tmp_path / "board").mkdir()
    assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(tmp_path / "board" / "e"),
                 "--no-mlflow"]) == 0
    (tmp_path / "timings.csv").write_text("model,latency_ms\nboard/e,3.0\n")
    assert main(["--runs-dir", str(runs), "calibrate", "--target", spec.target, "--measured",
                 str(tmp_path / "timings.csv")]) == 0
    before = len(load_study(spec.name, default_storage(runs)).trials)
    capsys.readouterr()
    try:
        assert main(["--runs-dir", str(runs), "submit", "--name", spec.name, "--resume", "--trials", "3",
                     "--no-mlflow"]) == 2
        err = capsys.readouterr().err
        assert (f"Search 'm4' emulated its figures for {spec.target} with the profile's own factors (not calibrated); "
                "its runs folder now emulates that board with factors fitted to 1 timing(s)") in err, err
        assert "start a new search (the finished trials stay stored)" in err
        assert len(load_study(spec.name, default_storage(runs)).trials) == before
        # its winner exported now keeps the search's figures, and says the board is emulated otherwise since
        assert main(["--runs-dir", str(runs), "export", "--search", spec.name, "--out", str(tmp_path / "again"),
                     "--no-mlflow"]) == 0
        card = json.loads((tmp_path / "again" / "model_card.json").read_text())
        first = json.loads((tmp_path / "board" / "e" / "model_card.json").read_text())
        assert card["metrics"]["latency_ms_p90"] == first["metrics"]["latency_ms_p90"] and "emulator_since" not in first
        assert card["emulator"] == "the profile's own factors (not calibrated)"
        assert card["emulator_since"].startswith("my-m4 is emulated with factors fitted to 1 timing(s) of the board")
        assert f"note: {card['emulator_since']}" in capsys.readouterr().out
    finally:  # the module's other tests emulate my-m4 as the search did
        (runs / "calibration" / "my-m4.json").unlink()

