"""The host is read, not assumed: CPU flags decide which precisions its search space holds."""

from pathlib import Path

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
