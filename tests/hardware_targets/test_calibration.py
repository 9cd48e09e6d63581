"""Emulated boards calibrated against published MLPerf Tiny results or a user's own timings, stored under the runs
folder and applied."""

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from hardware_targets import get_backend, load_profile
from hardware_targets.calibration import (
    Emulator, EmulatorParams, Sample, emulator_for, fit_efficiency, load_calibration, percentage_errors,
)
from hardware_targets.emulator import latency_seconds
from hardware_targets.graph import op_costs
from hardware_targets.workloads import export_reference
from search.calibrate import calibrate, read_measurements
from search.cli import main
from search.errors import ConfigError

# MLPerf Tiny v1.1 best-engine latencies (ms) on the NUCLEO-L4R5ZI, Cortex-M4 at 120 MHz: ../shared/hardware-facts.md
L4R5_BEST_MS = {"kws": 47.8, "ic": 167.8, "vww": 98.8, "ad": 4.05}


def test_cortex_m4_is_within_1_5x_of_every_published_reference_even_held_out(tmp_path):
    report = calibrate(load_profile("cortex-m4"), tmp_path)
    applied = [r for r in report["references"] if r.get("applied", True)]
    assert {r["task"]: r["published_ms"] for r in applied} == L4R5_BEST_MS
    for r in applied:
        assert 1 / 1.5 <= r["emulated_ms"] / L4R5_BEST_MS[r["task"]] <= 1.5, r
        assert 1 / 1.5 <= r["held_out_ratio"] <= 1.5, r  # predicted by a fit that never saw it
    energy = [r for r in report["references"] if "published_uj" in r]
    assert energy and all(r["engine"] == "tflm-reference" for r in energy)
    assert report["all_within"]


def test_a_stored_calibration_is_applied_while_the_profile_it_was_made_for_is_unchanged(tmp_path):
    profile = load_profile("cortex-m4")
    onnx_path = export_reference("kws", tmp_path / "kws.onnx")
    uncalibrated = get_backend(profile).measure(None, onnx_path, "int8-ptq", None, 1)["latency_ms_median"].value
    calibrate(profile, tmp_path / "runs")
    params = load_calibration(profile, tmp_path / "runs")
    assert params is not None and params.efficiency["int8"] != profile.efficiency["int8"]
    calibrated = get_backend(profile, tmp_path / "runs").measure(None, onnx_path, "int8-ptq", None, 1)
    assert calibrated["latency_ms_median"].provenance == "emulated"
    assert calibrated["latency_ms_median"].value != pytest.approx(uncalibrated)
    stored = json.loads((tmp_path / "runs" / "calibration" / "cortex-m4.json").read_text())
    assert stored["valid_for"]["profile"] == "cortex-m4" and stored["params"]["efficiency"]["int8"] > 0
    edited = tmp_path / "cortex-m4.yaml"  # the same board with a changed figure: the old fit no longer holds
    shutil.copyfile(profile.source, edited)
    edited.write_text(edited.read_text().replace("clock_mhz: 64 ", "clock_mhz: 80 "))
    assert load_calibration(load_profile(edited), tmp_path / "runs") is None


def test_a_board_with_no_published_reference_says_so(tmp_path):
    # the user's own timings are what is left to fit it to
    with pytest.raises(ConfigError, match="names no published reference class.*your own timings of the board with "
                                          "--measured FILE.*the references have: core cortex-m4"):
        calibrate(load_profile("esp32-s3"), tmp_path)
    # a Linux board: no microcontroller's class applies; it is fitted to timings, or measured over RPC instead
    with pytest.raises(ConfigError, match="no published results.*--measured FILE.*backend: remote and rpc:") as told:
        calibrate(load_profile("rpi4"), tmp_path)
    assert "cortex-m4" not in str(told.value)


def test_a_users_profile_file_is_calibrated_from_the_command_line_with_its_errors_before_and_after(
        tmp_path, capsys):
    board = tmp_path / "my-board.yaml"  # a user's board of the Cortex-M4 class, named by path
    text = Path(load_profile("cortex-m4").source).read_text()
    board.write_text(text.replace("name: cortex-m4", "name: my-board").replace("int8: 0.28 ", "int8: 0.5 "))
    assert main(["--runs-dir", str(tmp_path / "runs"), "calibrate", "--target", str(board)]) == 0
    out = capsys.readouterr().out
    stored = json.loads((tmp_path / "runs" / "calibration" / "my-board.json").read_text())
    summary = next(line for line in out.splitlines() if line.startswith("engine best"))
    assert (f"median absolute error {stored['mape_uncalibrated']:.1f}% with the profile's own factors -> "
            f"{stored['mape_calibrated']:.1f}% calibrated, largest {stored['worst_uncalibrated']:.1f}% -> "
            f"{stored['worst_calibrated']:.1f}%") in summary
    # the worst published reference, taken from the table the user reads, is the largest error reported
    applied = [r for r in stored["references"] if r.get("applied", True)]
    worst = max(abs(r["latency_ratio"] - 1) for r in applied) * 100
    assert stored["worst_calibrated"] == pytest.approx(worst)
    assert stored["worst_calibrated"] < stored["worst_uncalibrated"]  # efficiency 0.5 was far off the references
    assert load_calibration(load_profile(board), tmp_path / "runs") is not None


def test_the_fit_lowers_the_squared_relative_errors_it_minimises(tmp_path):
    profile = load_profile("cortex-m4")
    samples = [Sample(op_costs(export_reference(task, tmp_path / f"{task}.onnx")), "int8", ms * 1e-3, 120)
               for task, ms in L4R5_BEST_MS.items()]
    before = EmulatorParams.from_profile(profile)
    after = fit_efficiency(samples, profile)
    squared = {name: float((percentage_errors(samples, profile, p) ** 2).sum()) for name, p in
               (("before", before), ("after", after))}
    assert squared["after"] < squared["before"]
    for scale in (0.9, 1.1):  # and it is the least: a nudged efficiency does worse
        nudged = replace(after, efficiency={**after.efficiency, "int8": after.efficiency["int8"] * scale})
        assert float((percentage_errors(samples, profile, nudged) ** 2).sum()) > squared["after"]


def test_a_reference_class_nothing_was_published_for_names_the_classes_there_are(tmp_path):
    board = tmp_path / "m33.yaml"
    text = Path(load_profile("cortex-m4").source).read_text()
    board.write_text(text.replace("{core: cortex-m4, engine: best}", "{core: cortex-m33, engine: best}"))
    with pytest.raises(ConfigError, match=r"the references have core cortex-m4 or cortex-m7 and engine best or "
                                          r"tflm-reference"):
        calibrate(load_profile(board), tmp_path / "runs")
    assert not (tmp_path / "runs" / "calibration").exists()


@pytest.mark.parametrize("kwargs, message", [({"candidates": 5}, "'candidates' parameter"),
                                             ({"seed": -1}, "'seed' parameter")])
def test_bad_host_calibration_parameters_are_refused_before_measuring(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        calibrate(load_profile("host"), tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing was built


def _board_timings(tmp_path: Path, profile, truth: EmulatorParams, power_mw: float) -> Path:
    """A CSV of timings of the four reference models, fp32 and int8, on a board whose factors are ``truth``, with
    +-3% of timing noise, and the energy of all but one at ``power_mw`` with +-4% of noise: what a user writes
    after timing models on their own board and measuring its supply."""
    lines = ["# timed on my board, 100 runs each, median", "model,latency_ms,precision,energy_uj"]
    noise = iter([1.03, 0.97, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97])
    power_noise = iter([1.04, 0.96, 1.0, 1.02, 0.98, 1.01, 0.97, 1.03])
    for task in L4R5_BEST_MS:
        onnx_path = export_reference(task, tmp_path / f"{task}.onnx")
        for precision in ("fp32", "int8"):
            sample = Sample(op_costs(onnx_path), precision, 1.0)
            ms = latency_seconds(sample.ops, precision, profile, truth) * 1e3 * next(noise)
            uj = power_mw * ms * next(power_noise)  # mW x ms = uJ
            # the fp32 rows leave the precision to be read from the model's weights; one row has no energy
            lines.append(f"{task}.onnx,{ms:.6g},{precision if precision == 'int8' else ''},"
                         + ("" if (task, precision) == ("ic", "int8") else f"{uj:.6g}"))
    (tmp_path / "timings.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "timings.csv"


def test_a_board_is_fitted_to_a_users_own_timings_and_predicts_each_one_left_out(tmp_path, capsys):
    profile = load_profile("rpi4")
    ours = EmulatorParams.from_profile(profile)
    # the user's board is slower than its profile says: int8 kernels at 40% of the profile's efficiency, fp32 at 70%,
    # and three times the per-operator overhead
    truth = replace(ours, efficiency={**ours.efficiency, "int8": ours.efficiency["int8"] * 0.4,
                                      "fp32": ours.efficiency["fp32"] * 0.7}, op_overhead_us=ours.op_overhead_us * 3)
    timings = _board_timings(tmp_path, profile, truth, power_mw=4000)  # the profile says 5,700 mW
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "calibrate", "--target", "rpi4", "--measured", str(timings)]) == 0
    said = capsys.readouterr().out
    report = json.loads((runs / "calibration" / "rpi4.json").read_text())
    rows = report["measurements"]
    assert [r["model"] for r in rows] == [f"{t}.onnx" for t in L4R5_BEST_MS for _ in range(2)]
    assert [r["precision"] for r in rows] == ["fp32", "int8"] * 4  # fp32 read from the weights
    assert report["mape_uncalibrated"] > 25  # the profile's own factors were far off this board
    assert report["mape_calibrated"] < 5 and report["mape_held_out"] < 10
    assert all(0.85 < r["held_out_ratio"] < 1.15 for r in rows), [r["held_out_ratio"] for r in rows]
    for r in rows:
        assert re.search(rf"^{re.escape(r['model'])} +{r['precision']} .* {r['held_out_ratio']:.2f} ", said, re.M)
    # the active power from the seven energies: about the board's, and each energy predicted without its own row
    assert report["params"]["power_active_mw"] == pytest.approx(4000, rel=0.03)
    assert "emulated_uj" not in rows[3] and report["energy_rows"] == 7
    assert all(0.85 < r["energy_held_out_ratio"] < 1.15 for r in rows if "measured_uj" in r)
    assert "active power mW 5.7e+03 -> 4e+03" in said
    assert f"held out: median absolute error {report['mape_held_out']:.1f}%" in said
    # the fit is applied to what the board's backend emulates from then on, and said so
    vww = get_backend(profile, runs).measure(None, tmp_path / "vww.onnx", "int8-ptq", None, 1)
    assert vww["latency_ms_median"].value == pytest.approx(rows[5]["emulated_ms"])
    assert vww["energy_mj"].value == pytest.approx(rows[5]["emulated_uj"] * 1e-3)
    assert vww["latency_ms_median"].provenance == vww["energy_mj"].provenance == "emulated"
    words = emulator_for(profile, runs).words
    assert f"fitted to 8 timing(s) of the board ({timings.resolve()}; median error" in words
    assert words.endswith(f"; active power {report['params']['power_active_mw']:.4g} mW from 7 energy "
                          "measurement(s))")
    assert emulator_for(profile, tmp_path / "elsewhere") == Emulator(None, "the profile's own factors (not calibrated)")
    assert main(["--runs-dir", str(runs), "targets"]) == 0  # where a user looks for what a runs folder holds
    assert f"calibrated under {runs} (searches with it apply the fit): rpi4, {words}\n" in capsys.readouterr().out
    # a candidate evaluated for the board is emulated with the fit, and says so
    assert main(["--runs-dir", str(runs), "evaluate", "--target", "rpi4", "--width", "0.25", "--epochs", "1",
                 "--finetune-epochs", "0"]) == 0
    said = capsys.readouterr().out
    assert f"latency and energy emulated for rpi4 with {words}\n" in said
    shown = float(re.search(r"^latency_ms_median +([\d.]+) +ms +emulated$", said, re.M).group(1))
    onnx_path = re.search(r"^artifacts: (\S+model.onnx)$", said, re.M).group(1)
    fitted, own = (get_backend(profile, where).measure(None, onnx_path, "fp32", None, 1)["latency_ms_median"].value
                   for where in (runs, None))
    assert shown == pytest.approx(fitted, rel=1e-3) and shown != pytest.approx(own, rel=0.05)


def test_one_timing_fits_its_precision_exactly_and_says_nothing_was_left_out(tmp_path, capsys):
    profile = load_profile("rpi4")
    export_reference("ad", tmp_path / "ad.onnx")
    # as a spreadsheet saves it: a byte-order mark and Windows line ends
    (tmp_path / "t.csv").write_bytes("model,latency_ms,precision,clock_mhz\r\nad.onnx,0.9,int8,1800\r\n".encode(
        "utf-8-sig"))
    assert main(["--runs-dir", str(tmp_path / "runs"), "calibrate", "--target", "rpi4", "--measured",
                 str(tmp_path / "t.csv")]) == 0
    said = capsys.readouterr().out
    row = json.loads((tmp_path / "runs" / "calibration" / "rpi4.json").read_text())["measurements"][0]
    assert row["emulated_ms"] == pytest.approx(0.9) and row["clock_mhz"] == 1800 and "held_out_ratio" not in row
    assert "held out: none (one timing" in said


@pytest.mark.parametrize("text, target, message", [
    ("model,latency\nad.onnx,1\n", "rpi4", r"must name the comma-separated columns model and latency_ms .*"
                                            r"latency_ms missing, "
                                            r"latency not a column"),
    ("model,latency_ms\nad.onnx,-2\n", "rpi4", r"row 2: latency_ms must be a positive number. Got '-2'"),
    ("model,latency_ms,energy_uj\nad.onnx,2,0\n", "rpi4", r"row 2: energy_uj must be a positive number. Got '0'"),
    ("model,latency_ms\nad.onnx,1 ms\n", "rpi4", r"row 2: latency_ms must be a positive number. Got '1 ms'"),
    ("model,latency_ms\nkws.onnx,1\n", "rpi4", r"row 2: .*kws.onnx does not exist \(a relative path is read from "
                                               r"the CSV file's folder"),
    ("model,latency_ms\nad.onnx,1\n", "cortex-m4", r"row 2: ad.onnx is not a .tflite file; cortex-m4 runs "
                                                   r"TensorFlow Lite Micro"),
    ("model,latency_ms,precision\nad.onnx,1,fp16\n", "rpi4", r"row 2: rpi4 has no fp16 arithmetic"),
    ("model,latency_ms,precision\nad.onnx,1,int4\n", "rpi4", r"row 2: precision must be one of"),
    ("model,latency_ms\nad.onnx,1,3\n", "rpi4", r"row 2: more values than the 2 columns"),
    ("model,latency_ms\n", "rpi4", r"holds no measurement"),
    ("model,latency_ms\nbroken.onnx,1\n", "rpi4", r"row 2: .*broken.onnx is not a readable .onnx model"),
    ("model,latency_ms,precision\nad.onnx,0.00001,int8\n", "rpi4", r"below what the profile's overheads alone take"),
])
def test_a_bad_timings_file_is_refused_with_its_row_and_nothing_is_stored(tmp_path, text, target, message):
    export_reference("ad", tmp_path / "ad.onnx")
    (tmp_path / "broken.onnx").write_bytes((tmp_path / "ad.onnx").read_bytes()[:100])  # cut short in copying
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(ConfigError, match=message):
        calibrate(load_profile(target), tmp_path / "runs", measured=tmp_path / "t.csv")
    assert not (tmp_path / "runs").exists()


def test_timings_are_for_emulated_boards_only(tmp_path):
    (tmp_path / "t.csv").write_text("model,latency_ms\n")
    with pytest.raises(ConfigError, match="host is measured where it runs"):
        calibrate(load_profile("host"), tmp_path / "runs", measured=tmp_path / "t.csv")


def test_the_precision_of_a_bare_model_file_is_read_from_its_weights(tmp_path):
    import numpy as np

    from search.stages.export import quantize_ptq

    fp32 = export_reference("ad", tmp_path / "ad.onnx")
    quantize_ptq(fp32, tmp_path / "ad_int8.onnx", np.random.default_rng(0).normal(size=(8, 640)).astype(np.float32))
    (tmp_path / "t.csv").write_text("model,latency_ms\nad.onnx,0.9\nad_int8.onnx,0.6\n")
    rows = [row for row, _ in read_measurements(tmp_path / "t.csv", load_profile("rpi4"))]
    assert [r["precision"] for r in rows] == ["fp32", "int8"]
