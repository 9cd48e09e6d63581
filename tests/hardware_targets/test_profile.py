import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hardware_targets import available_profiles, get_backend, load_profile
from hardware_targets.profile import _SCHEMA
from search.errors import ProfileError


def test_every_shipped_profile_loads():
    names = available_profiles()
    assert "host" in names
    for name in names:
        p = load_profile(name)
        assert p.name == name and "kind" in p.tvm_target


def test_host_profile_measures_locally():
    p = load_profile("host")
    assert p.backend == "local" and get_backend(p).provenance == "measured"


@pytest.mark.parametrize(
    "text, message",
    [("just a string", "YAML mapping"),
     ("name: x\nbackend: local\n", "field 'tvm_target' is required"),
     ("name: x\nbackend: quantum\ntvm_target: {kind: llvm}\n", "field 'backend' must be one of"),
     ("name: x\nbackend: local\ntvm_target: {kind: llvm}\ncores: two\n", "field 'cores' must be int"),
     ("name: x\nbackend: local\ntvm_target: {mcpu: a}\n", "must have a 'kind'"),
     ("name: [unclosed\n", "not valid YAML"),
     ("name: x\nbackend: remote\ntvm_target: {kind: llvm}\n", "needs 'rpc' with the device's host and port"),
     ("name: x\nbackend: remote\ntvm_target: {kind: llvm}\nrpc: {tracker_host: lab, tracker_port: 9190}\n",
      "tracker_host, tracker_port, key of an RPC tracker"),
     ("? \nname: x\nbackend: local\ntvm_target: {kind: llvm}\n", r"field names must be text; got \[None\]"),
     ("name: x\nbackend: local\ndetect_host: true\ntvm_target: {kind: llvm}\npower_mw_per_core: {? : 1}\n",
      "field 'power_mw_per_core' maps names"),
     ("name: x\nbackend: remote\ntvm_target: {kind: llvm}\nrpc: {host: [a]}\n", "'rpc' maps names"),
     ("name: x\nbackend: remote\ntvm_target: {kind: llvm}\nrpc: {port: -1}\n", "'rpc.port' must be a positive"),
     ("name: x\nbackend: local\ntvm_target: {kind: llvm, mcpu: {a: 1}}\n", "'tvm_target' maps names")],
)
def test_malformed_profiles_name_file_and_field(tmp_path, text, message):
    path = tmp_path / "board.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert "board.yaml" in str(info.value)


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ProfileError, match="Known targets: .*host"):
        load_profile("toaster")


def test_the_required_devices_ship():
    assert {"host", "rpi4", "rpi5", "jetson-orin-nano-cpu", "cortex-m7", "cortex-m4", "esp32-s3"} <= \
        set(available_profiles())
    m4 = load_profile("cortex-m4")
    assert (m4.clock_mhz, m4.sram_bytes, m4.flash_bytes) == (64, 256 * 1024, 1024 * 1024)
    assert not m4.supports("fp16") and m4.supports("int8-qat") and m4.supports("int8-ptq")
    # a board with fp16 arithmetic that runs TFLite Micro still cannot ship fp16: no export of it
    fp16_board = dataclasses.replace(m4, peak_macs_per_cycle={**m4.peak_macs_per_cycle, "fp16": 2.0})
    assert fp16_board.arithmetic_reason("fp16") is None and "TFLite Micro" in fp16_board.unsupported_reason("fp16")


def test_every_number_in_a_shipped_profile_cites_a_source():
    """Each numeric line carries a comment: a source tag or an explanation."""
    from hardware_targets.profile import PROFILE_DIR

    for path in PROFILE_DIR.glob("*.yaml"):
        for line in path.read_text().splitlines():
            body = line.split("#")[0]
            key = body.split(":", 1)[0].strip()
            if key in ("name", "description", "tvm_target") or ":" not in body:
                continue
            if any(ch.isdigit() for ch in body.split(":", 1)[1]):
                assert "#" in line or line.startswith("efficiency: {"), f"{path.name}: uncited figure: {line!r}"


@pytest.mark.parametrize(
    "extra, message",
    [("clock_mhz: 64\n", "an emulated profile needs field"),
     ("clock_mhz: 64\npeak_macs_per_cycle: {fp32: 1, fp16: 0}\nefficiency: {fp32: 1, fp16: 0, int8: 1}\n"
      "power_active_mw: 1\n", "field 'peak_macs_per_cycle' has no int8: give each of fp32, fp16, int8"),
     ("clock_mhz: 64\npeak_macs_per_cycle: {fp32: 1, fp16: 0, int8: fast}\nefficiency: {fp32: 1, fp16: 0, int8: 1}\n"
      "power_active_mw: 1\n", "'peak_macs_per_cycle.int8' must be a number"),
     ("clock_mhz: -5\n", "'clock_mhz' must be >= 0"),
     ("clock_mhz: 64\npeak_macs_per_cycle: {fp32: 1, fp16: 0, int8: 2}\nefficiency: {fp32: 1, fp16: 0, int8: 1}\n"
      "power_active_mw: 1\nruntime: tflite-micro\nsram_bytes: 262144\nflash_bytes: 1048576\n",
      r"a TFLite Micro board needs field\(s\) \['runtime_ram_overhead_bytes', 'runtime_flash_bytes'\]"),
     ("clock_speed: 64\n", "unknown field"),
     ("power_mw: 8\n", r"unknown field\(s\) \['power_mw'\] \(power_mw: did you mean power_idle_mw or power_active_mw\?\)")],
)
def test_emulated_profile_schema(tmp_path, extra, message):
    path = tmp_path / "mcu.yaml"
    path.write_text("name: mcu\nbackend: emulated\ntvm_target: {kind: llvm}\n" + extra)
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(), st.text(max_size=6),
                  st.sampled_from(["local", "remote", "emulated", "tflite-micro", "llvm", "fp32", "int8"]))
_value = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.none(), st.integers(), st.sampled_from(["fp32", "fp16", "int8", "kind", "port"])),
                    inner, max_size=3)), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(available_profiles()),
       st.lists(st.tuples(st.one_of(st.sampled_from(sorted(_SCHEMA)), st.none(), st.integers()), _value), max_size=3))
@example("host", [("power_mw_per_core", {None: None})])  # found by fuzzing: a None CPU class crashed detection
@example("host", [(None, None), (0, None)])  # found by fuzzing: unsortable field names
def test_fuzzed_profiles_load_or_name_the_file_and_field(tmp_path_factory, name, edits):
    """A shipped profile with fields replaced by any YAML value loads, or fails with one line naming the file."""
    data = yaml.safe_load(Path(load_profile(name).source).read_text())
    data.update(edits)
    path = tmp_path_factory.mktemp("fuzz") / "board.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_profile(path)
    except ProfileError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
