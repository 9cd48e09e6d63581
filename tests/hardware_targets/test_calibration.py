"""Emulated boards calibrated against published MLPerf Tiny results, stored under the runs folder and applied."""

import json
import shutil

import pytest

from hardware_targets import get_backend, load_profile
from hardware_targets.calibration import load_calibration
from hardware_targets.workloads import export_reference
from search.calibrate import calibrate
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
    with pytest.raises(ConfigError, match="names no published reference class"):
        calibrate(load_profile("esp32-s3"), tmp_path)


@pytest.mark.parametrize("kwargs, message", [({"candidates": 5}, "'candidates' parameter"),
                                             ({"seed": -1}, "'seed' parameter")])
def test_bad_host_calibration_parameters_are_refused_before_measuring(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        calibrate(load_profile("host"), tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing was built
