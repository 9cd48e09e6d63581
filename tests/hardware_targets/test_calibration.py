"""Emulated boards calibrated against published MLPerf Tiny results, stored under the runs folder and applied."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from hardware_targets import get_backend, load_profile
from hardware_targets.calibration import EmulatorParams, Sample, fit_efficiency, load_calibration, percentage_errors
from hardware_targets.graph import op_costs
from hardware_targets.workloads import export_reference
from search.calibrate import calibrate
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
    with pytest.raises(ConfigError, match="names no published reference class.*The references have core cortex-m4"):
        calibrate(load_profile("esp32-s3"), tmp_path)
    # a Linux board: no microcontroller's class applies; it is measured over RPC instead
    with pytest.raises(ConfigError, match="no published results.*backend: remote and rpc:") as told:
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
