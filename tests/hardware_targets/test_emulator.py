"""The analytic device model against published figures and its own stated assumptions."""

import dataclasses

import optuna
import pytest

from hardware_targets import get_backend, load_profile
from hardware_targets.backends.emulated import EmulatedBackend
from hardware_targets.emulator import EmulatorParams, latency_seconds
from hardware_targets.graph import op_costs
from hardware_targets.metric import Metric
from hardware_targets.workloads import export_mobilenet_v1
from objectives.memory import peak_activation_bytes
from objectives.size import weight_bytes
from search.candidate import Candidate, CandidateResult
from search.spec import SearchSpec
from search.study import Row, record_result


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    return export_mobilenet_v1(tmp_path_factory.mktemp("vww") / "mobilenet_v1_025.onnx")


def test_mobilenet_is_mlperf_tiny_vww_sized(mobilenet):
    ops = op_costs(mobilenet)
    macs = sum(op.macs for op in ops)
    weights = sum(op.weights for op in ops)
    assert 6e6 < macs < 9e6  # hardware-facts.md: ~7.5 M MACs
    assert 180e3 < weights < 280e3  # int8: ~1 byte per weight -> "about 250 KB" of weights


def test_cortex_m4_person_detection_is_hundreds_of_ms_and_tens_of_mw(mobilenet):
    """Reference: MLPerf Tiny v1.1 VWW on a Cortex-M4 (STM32L4R5, 120 MHz): 98.8 ms with the best engine,
    603 ms with reference TFLite Micro, at 40-41.5 mW. Scaled to the nRF52840's 64 MHz: 185-1130 ms.
    We accept 100-1500 ms, and an average power of 5-50 mW."""
    m4 = load_profile("cortex-m4")
    metrics = EmulatedBackend(m4).measure(None, mobilenet, "int8-ptq", None, 1)
    ms = metrics["latency_ms_median"].value
    assert 100 <= ms <= 1500
    assert metrics["latency_ms_median"].provenance == "emulated"
    power_mw = metrics["energy_mj"].value / (ms / 1e3)
    assert 5 <= power_mw <= 50


def test_int8_speedup_follows_the_profile(mobilenet):
    m7 = load_profile("cortex-m7")
    same_eff = EmulatorParams({"fp32": 0.4, "fp16": 0, "int8": 0.4}, 0.0, 0.0)
    twice = dataclasses.replace(m7, peak_macs_per_cycle={"fp32": 1, "fp16": 0, "int8": 2})
    ops = op_costs(mobilenet)
    speedup = latency_seconds(ops, "fp32", twice, same_eff) / latency_seconds(ops, "int8-ptq", twice, same_eff)
    assert speedup == pytest.approx(2.0, rel=0.01)  # compute-bound, 2x int8 throughput, no overheads
    with_overhead = EmulatorParams(same_eff.efficiency, 20.0, 0.0)
    speedup = latency_seconds(ops, "fp32", twice, with_overhead) / latency_seconds(ops, "int8-ptq", twice, with_overhead)
    assert 1.0 < speedup < 2.0  # fixed per-operator costs dilute it


def test_unsupported_precision_is_a_clear_candidate_failure(mobilenet):
    from search.errors import CandidateError

    with pytest.raises(CandidateError, match="no fp16 arithmetic"):
        EmulatedBackend(load_profile("cortex-m4")).measure(None, mobilenet, "fp16", None, 1)


def test_unstructured_sparsity_only_helps_where_kernels_skip_zeros(tmp_path):
    import torch

    from search.models import build_model

    model = build_model((1, 8, 8), 10, 1.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_((torch.rand_like(p) > 0.8).float())
    path = tmp_path / "sparse.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    m4 = load_profile("cortex-m4")
    params = EmulatorParams.from_profile(m4)
    ops = op_costs(path)
    dense = latency_seconds(ops, "int8-ptq", m4, params)
    skipping = latency_seconds(ops, "int8-ptq", dataclasses.replace(m4, unstructured_sparsity_speedup=True), params)
    assert skipping < 0.6 * dense


def _result_for(path, profile, precision="fp32"):
    metrics = dict(EmulatedBackend(profile).measure(None, path, precision, None, 1))
    size = weight_bytes(path)["weight_bytes"] // (4 if precision == "fp32" else 1)
    metrics.update({
        "accuracy": Metric(0.9, "fraction", "measured"),
        "size_bytes": Metric(float(size * 4), "bytes", "measured"),
        "flash_bytes": Metric(float(size * 4), "bytes", "measured"),
        "ram_bytes": Metric(float(peak_activation_bytes(path) + (profile.runtime_ram_overhead_bytes or 0)), "bytes",
                            "estimated"),
    })
    return CandidateResult(Candidate(), "vww", profile.name, metrics, {}, {}, {},
                           info={"provenance": "emulated",
                                 "limits": {"ram_bytes": profile.sram_bytes, "flash_bytes": profile.flash_bytes}})


def test_memory_fit_is_a_constraint(tmp_path):
    """fp32 MobileNetV1-0.5 at 96x96: ~3.3 MB of weights, over the Cortex-M4's 1 MB of flash."""
    big = export_mobilenet_v1(tmp_path / "mobilenet_v1_05.onnx", width=0.5)
    feasible = {}
    for name in ("cortex-m4", "rpi4"):
        profile = load_profile(name)
        spec = SearchSpec(name="fit", target=name, latency_budget_ms=1e6)
        study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
        trial = study.ask()
        record_result(study, trial, spec, _result_for(big, profile))
        frozen = study.trials[0]
        feasible[name] = Row.from_trial(frozen).feasible
        if name == "cortex-m4":
            assert frozen.constraints["fits_flash"] > 0  # over the 1 MB of flash
    assert feasible == {"cortex-m4": False, "rpi4": True}


def test_every_emulated_profile_gives_latency_and_energy(mobilenet):
    from hardware_targets import available_profiles

    for name in available_profiles():
        profile = load_profile(name)
        if profile.backend != "emulated":
            continue
        m = get_backend(profile).measure(None, mobilenet, "int8-ptq", None, 1)
        assert m["latency_ms_median"].value > 0 and m["energy_mj"].value > 0
        assert {m["latency_ms_median"].provenance, m["energy_mj"].provenance} == {"emulated"}
