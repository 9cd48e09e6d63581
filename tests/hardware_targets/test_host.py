"""The host is read, not assumed: CPU flags decide which precisions its search space holds."""

import re
from pathlib import Path

import pytest

from hardware_targets import load_profile
from hardware_targets.host import host_cpu, parse_cpuinfo

AVX2_EPYC = "processor : 0\nvendor_id : AuthenticAMD\nmodel name : AMD EPYC 7B13\nflags : fpu sse sse2 avx fma avx2\n"
SAPPHIRE = ("processor : 0\nmodel name : Intel(R) Xeon(R) Platinum 8480+\n"
            "flags : fpu sse avx2 avx512f avx512_vnni avx512_fp16 amx_tile\n")
ARM = "processor : 0\nFeatures : fp asimd evtstrm aes asimdhp asimddp\nCPU part : 0xd0b\n"


def test_cpuinfo_is_parsed_for_model_and_flags():
    cpu = parse_cpuinfo(AVX2_EPYC, cores=2)
    assert cpu.model == "AMD EPYC 7B13" and "avx2" in cpu.flags and "avx512f" not in cpu.flags
    assert "asimdhp" in parse_cpuinfo(ARM).flags
    assert parse_cpuinfo(AVX2_EPYC).key != parse_cpuinfo(SAPPHIRE).key


def test_fp16_is_left_out_of_the_host_space_without_avx512_fp16():
    host = load_profile("host")
    reason = host.unsupported_reason("fp16", cpu=parse_cpuinfo(AVX2_EPYC))
    assert reason and "AMD EPYC 7B13" in reason and "avx512_fp16" in reason
    assert host.unsupported_reason("fp16", cpu=parse_cpuinfo(SAPPHIRE)) is None
    assert host.unsupported_reason("fp16", cpu=parse_cpuinfo(ARM)) is None
    for precision in ("fp32", "int8-ptq", "int8-qat"):
        assert host.unsupported_reason(precision, cpu=parse_cpuinfo(AVX2_EPYC)) is None


def test_this_machine_is_judged_by_its_own_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.lower().startswith(("flags", "features")):
            flags = set(line.split(":", 1)[1].split())
            break
    native = bool(flags & {"avx512_fp16", "asimdhp"})
    assert load_profile("host").supports("fp16") == native
    assert host_cpu().flags == frozenset(flags)


def test_device_profiles_say_it_in_their_peak_rates():
    assert load_profile("rpi5").supports("fp16")  # Cortex-A76: fp16 arithmetic
    assert not load_profile("cortex-m4").supports("fp16")
    assert "peak_macs_per_cycle.fp16 is 0" in load_profile("cortex-m4").unsupported_reason("fp16")


def test_the_host_profile_is_filled_in_from_the_detected_cpu():
    from hardware_targets.host import describe_host

    data = {"name": "host", "backend": "local", "description": "this machine", "peak_macs_per_cycle":
            {"fp32": 1, "fp16": 2, "int8": 1}, "power_mw_per_core": {"EPYC": 3750, "Xeon": 6750, "default": 5000}}
    epyc = describe_host(data, parse_cpuinfo(AVX2_EPYC + "cpu MHz : 2450.0\n", cores=2))
    assert epyc["cores"] == 2 and epyc["clock_mhz"] == 2450.0 and epyc["power_active_mw"] == 3750
    assert epyc["peak_macs_per_cycle"] == {"fp32": 16.0, "fp16": 2, "int8": 16.0}  # 8 lanes x 2 FMA; fp16 software
    assert "AMD EPYC 7B13" in epyc["description"] and "avx2 fma" in epyc["description"]
    xeon = describe_host(data, parse_cpuinfo(SAPPHIRE, cores=2))
    assert xeon["power_active_mw"] == 6750
    assert xeon["peak_macs_per_cycle"] == {"fp32": 16.0 * 1, "fp16": 32.0, "int8": 16.0}  # no fma flag listed here
    assert describe_host(data, parse_cpuinfo(ARM))["power_active_mw"] == 5000


ZEN = "processor : 0\nvendor_id : AuthenticAMD\ncpu family : {}\nmodel name : AMD EPYC\nflags : fpu avx2 fma avx512f\n"


def test_the_fp32_rate_follows_the_fma_units_not_only_the_flags(tmp_path):
    import yaml

    from hardware_targets.errors import ProfileError
    from hardware_targets.host import describe_host
    from hardware_targets.profile import PROFILE_DIR

    # Zen 4 (family 25) and Zen 5 (26) VMs show the same name and AVX-512 flags; Zen 4 runs AVX-512 on 256-bit
    # FMA units, so its fp32 rate is Zen 3's, 2 x 8 lanes, and Zen 5's full-width units reach 2 x 16
    data = yaml.safe_load((PROFILE_DIR / "host.yaml").read_text())
    zen4, zen5 = parse_cpuinfo(ZEN.format(25)), parse_cpuinfo(ZEN.format(26))
    assert zen4.family == "AuthenticAMD family 25" and zen4.flags == zen5.flags and zen4.key == zen5.key
    assert describe_host(data, zen4)["peak_macs_per_cycle"]["fp32"] == 16.0
    assert describe_host(data, zen5)["peak_macs_per_cycle"]["fp32"] == 32.0
    assert describe_host(data, zen4)["peak_macs_per_cycle"]["int8"] == 16.0  # QDQ runs at the fp32 rate
    # a table entry that is not a positive rate is refused with the field named
    bad = tmp_path / "host.yaml"
    bad.write_text(yaml.safe_dump({**data, "fp32_macs_per_cycle_by_family": {"AuthenticAMD family 25": 0}}))
    with pytest.raises(ProfileError, match="fp32_macs_per_cycle_by_family"):
        load_profile(bad)


def test_rapl_counters_wrap_and_the_baseline_power_is_taken_off(tmp_path):
    from hardware_targets.backends.local import inference_energy_mj, rapl_delta_uj, read_rapl

    package = tmp_path / "intel-rapl:0"
    package.mkdir()
    (package / "energy_uj").write_text("999000\n")
    (package / "max_energy_range_uj").write_text("1000000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain (core): not counted twice
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("5\n")
    before = read_rapl(tmp_path)
    assert before == [(999000, 1000000)]
    (package / "energy_uj").write_text("2000\n")  # wrapped past 1,000,000
    assert rapl_delta_uj(before, read_rapl(tmp_path)) == 3000
    # baseline 10 W (2 J in 0.2 s); timed 0.5 s drew 6 J: 1 J over the baseline, over 1,000 calls = 1 mJ each
    assert inference_energy_mj(2_000_000, 0.2, 6_000_000, 0.5, 1000) == pytest.approx(1.0)
    assert read_rapl(tmp_path / "nothing") is None


def test_runtimes_are_timed_in_turns_and_each_is_charged_its_own_energy(tmp_path):
    """Every runtime runs in every repeat, each repeat starting one further along, so a change in the machine's speed
    falls on all alike; each timed block follows untimed calls of its own, since the runtime before it evicted its
    weights from the caches; with a RAPL counter, each runtime's timed blocks are charged the energy drawn while
    they ran."""
    from hardware_targets.backends.local import time_in_turns

    counter = tmp_path / "intel-rapl:0" / "energy_uj"
    counter.parent.mkdir()
    counter.write_text("0\n")
    order = []

    def timer(key, uj_per_call, seconds_per_call):
        def block(n):
            order.append(key)
            counter.write_text(f"{int(counter.read_text()) + uj_per_call * n}\n")
            return seconds_per_call, n
        return block

    timed = time_in_turns({"a": timer("a", 50, 1e-4), "b": timer("b", 10, 2e-4), "c": timer("c", 0, 1e-3)},
                          repeats=4, rapl=tmp_path)
    assert {k: t.seconds_per_call for k, t in timed.items()} == {"a": [1e-4] * 4, "b": [2e-4] * 4, "c": [1e-3] * 4}
    assert order[:6] == list("aabbcc")  # each one's warm-up block, then the single call that sizes its blocks
    assert order[6:] == list("aabbcc" "bbccaa" "ccaabb" "aabbcc")  # an untimed block before each timed one
    # nothing drew power during the baseline, so each call costs what its timed blocks drew: 50 µJ, 10 µJ, nothing
    assert [timed[k].energy_mj for k in "abc"] == pytest.approx([0.05, 0.01, 0.0])
    assert time_in_turns({"a": timer("a", 50, 1e-4)}, repeats=2, rapl=tmp_path / "none")["a"].energy_mj is None


def test_targets_lists_every_profile_and_what_this_host_runs(capsys):
    from hardware_targets import available_profiles
    from search.cli import main

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in out for name in available_profiles())
    assert f"CPU kind {host_cpu().key}" in out
    assert f"--resources '{{\"edgesearch-cpu-{host_cpu().key}\": {host_cpu().cores}}}'" in out
    assert "unstructured pruning is searched only where" in out and "none of these" in out
    # a rate the flags give no instructions for is the profile's software figure, not one derived from the flags
    native_fp16 = host_cpu().has_any(("avx512_fp16", "asimdhp"))
    assert bool(re.search(r"fp16 [\d.]+ \(no native instructions: the profile's software figure", out)) \
        is not native_fp16


def test_a_process_that_keeps_a_core_busy_is_named_and_this_ones_children_are_not(capsys):
    """A second search started beside a first timed the same candidate 1.6x slower, and said nothing."""
    import subprocess
    import sys

    import psutil

    from hardware_targets.host import competing_processes
    from search.workers import say_competing_load

    spin = "import time; end = time.time() + 30\nwhile time.time() < end: pass"
    # started by a shell that exits at once: the spinning process is no descendant of this one, as another search is
    started = subprocess.run(["sh", "-c", f"{sys.executable} -c '{spin}' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
    outside = psutil.Process(int(started.stdout))
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        busy = {pid: (command, percent) for command, pid, percent in competing_processes(1.0)}
        assert child.pid not in busy  # this process's own workers are not competition
        command, percent = busy[outside.pid]
        assert command.startswith(f"{Path(sys.executable).name} -c import time") and percent >= 25
        lines = []
        say_competing_load(lines.append, "this search")
        assert len(lines) == 1 and lines[0].startswith("warning: other processes keep this machine's CPU busy: ")
        assert f"(pid {outside.pid}, " in lines[0]
        assert "The latencies this search times here are taken under their load" in lines[0]
    finally:
        outside.kill()
        child.kill()
        child.wait()
