"""Measured backends for real: the host, a TVM RPC server on 127.0.0.1, and the host calibration."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from hardware_targets import get_backend, load_profile
from hardware_targets.backends.local import read_rapl_uj
from hardware_targets.calibration import calibrate_host, load_calibration
from search.candidate import Candidate
from search.models import build_model
from search.stages.compile import compile_tvm
from search.stages.export import export_onnx
from search.stages.train import fit


@pytest.fixture(scope="module")
def rpc_server(free_port):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                               str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield port
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_remote_backend_matches_local_within_2x(rpc_server, digits, tiny_budget, tmp_path):
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 1.0), digits, 1)
    onnx_path = export_onnx(model, Candidate(budget=tiny_budget), digits, tmp_path / "m.onnx")
    host = load_profile("host")
    artifact = compile_tvm(onnx_path, host.tvm_target, tmp_path / "m.so", (1, 1, 8, 8), "float32")
    profile_path = tmp_path / "loopback-board.yaml"
    profile_path.write_text(yaml.safe_dump({"name": "loopback-board", "backend": "remote",
                                            "tvm_target": host.tvm_target,
                                            "rpc": {"host": "127.0.0.1", "port": rpc_server}}))
    remote = get_backend(load_profile(profile_path))
    sample = digits.x_val[:1]
    r = remote.measure(artifact, onnx_path, "fp32", sample, 10)["latency_ms_median"]
    local = get_backend(host).measure(artifact, onnx_path, "fp32", sample, 10)["latency_ms_median"]
    assert r.provenance == local.provenance == "measured"
    assert 0.5 <= r.value / local.value <= 2.0


def test_host_energy_is_labelled_by_how_it_was_obtained(digits, tiny_budget, tmp_path):
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 0.5), digits, 1)
    onnx_path = export_onnx(model, Candidate(budget=tiny_budget), digits, tmp_path / "m.onnx")
    host = load_profile("host")
    artifact = compile_tvm(onnx_path, host.tvm_target, tmp_path / "m.so", (1, 1, 8, 8), "float32")
    energy = get_backend(host).measure(artifact, onnx_path, "fp32", digits.x_val[:1], 5)["energy_mj"]
    assert energy.value > 0
    assert energy.provenance == ("measured" if read_rapl_uj() is not None else "estimated")


def test_calibration_beats_the_uncalibrated_model_on_held_out_candidates(tmp_path):
    host = load_profile("host")
    report = calibrate_host(host, tmp_path, candidates=9, seed=0)
    assert report["held_out"] == 3 and report["train"] == 6
    assert report["mape_calibrated"] < report["mape_uncalibrated"]
    assert report["mape_calibrated"] < 25.0
    params = load_calibration(host, tmp_path)
    assert params is not None and params.efficiency["fp32"] > 0
