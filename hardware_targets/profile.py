"""Target profiles: one YAML file per device, loaded and validated by one function.

Adding a device means adding ``profiles/<name>.yaml``; nothing in code names a device.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hardware_targets.errors import ProfileError

PROFILE_DIR = Path(__file__).parent / "profiles"
# where a user writing a profile for a new device finds every field filled in, with its source
_START_FROM = f"; start from the shipped profile nearest the device ({PROFILE_DIR}/NAME.yaml), which has every field."
BACKENDS = ("local", "remote", "emulated")
# what runs the model on the device: TVM's runtime (CPU targets), or TensorFlow Lite Micro (microcontrollers,
# for which TVM 0.27 has no runtime)
RUNTIMES = ("tvm", "tflite-micro")
# what TFLite Micro converts: int8 (PTQ, and QAT through its trained weights) fully integer; fp16 has no MCU
# arithmetic
TFLM_PRECISIONS = ("fp32", "int8-ptq", "int8-qat")
TRACKER_FIELDS = ("tracker_host", "tracker_port", "key")
PRECISION_KEYS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    backend: str
    tvm_target: dict[str, Any]
    description: str = ""
    cores: int | None = None
    clock_mhz: float | None = None
    peak_macs_per_cycle: dict[str, float] | None = None  # per core, per precision; 0 = unsupported
    efficiency: dict[str, float] | None = None  # achieved / peak, per precision
    memory_bandwidth_gbps: float | None = None
    op_overhead_us: float | None = None
    call_overhead_us: float | None = None
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    runtime_ram_overhead_bytes: int | None = None
    power_active_mw: float | None = None
    power_idle_mw: float | None = None
    energy_pj_per_mac: dict[str, float] | None = None
    energy_pj_per_byte: float | None = None
    unstructured_sparsity_speedup: bool = False  # True only where kernels skip zeros
    # local backends: precision -> CPU flags (any of) the host needs for native arithmetic in it
    cpu_flags: dict[str, list[str]] | None = None
    calibration_reference: dict[str, str] | None = None  # MLPerf Tiny results of this class: {core, engine}
    detect_host: bool = False  # local profiles: cores, clock, peak rates and power come from the detected CPU
    power_mw_per_core: dict[str, float] | None = None  # CPU-model substring (or "default") -> one core's active mW
    rpc: dict[str, Any] | None = None  # remote backend: host, port, or tracker + key
    cross_compiler: str | None = None  # e.g. aarch64-linux-gnu-gcc: links the build a board loads over RPC
    runtime: str = "tvm"  # one of RUNTIMES
    runtime_flash_bytes: int | None = None  # tflite-micro: the interpreter and the kernels of a small CNN, in flash
    tflm_kernels: str | None = None  # tflite-micro: the optimised kernel library to build TFLM with (CMSIS-NN, ESP-NN)
    source: str = ""  # the file it came from

    def supports(self, precision: str) -> bool:
        """Whether the device has arithmetic for a candidate precision (int8-ptq / int8-qat -> int8)."""
        return self.unsupported_reason(precision) is None

    def unsupported_reason(self, precision: str, cpu=None) -> str | None:
        """Why a candidate of ``precision`` cannot ship to the device, or None when it can: no native arithmetic
        for it, or no export of it for the device's runtime."""
        reason = self.arithmetic_reason(precision, cpu)
        if reason is None and self.runtime == "tflite-micro" and precision not in TFLM_PRECISIONS:
            return f"no TFLite Micro export of {precision} here (exported: {', '.join(TFLM_PRECISIONS)})"
        return reason

    def pruning_reason(self, mode: str) -> str | None:
        """Why pruning in ``mode`` cannot pay on the device, or None when it can. Zeroed weights in dense
        kernels, held dense in memory, cost the same time, memory and energy as the weights they replace."""
        if mode == "unstructured" and not self.unstructured_sparsity_speedup:
            return ("kernels that do not skip zero weights and hold weights dense (unstructured_sparsity_speedup "
                    "is not set in its profile): unstructured sparsity lowers no latency, memory or energy there, "
                    "only accuracy (and the size of the model file gzip-compressed)")
        return None

    def arithmetic_reason(self, precision: str, cpu=None) -> str | None:
        """Why the device has no native arithmetic for ``precision``, or None when it has.

        Emulated and remote devices say so in their peak MAC rates; the host is what it is, so a
        local profile names the CPU flags a precision needs and this machine's CPU (or ``cpu``) is read."""
        kind = arithmetic(precision)
        if self.peak_macs_per_cycle and self.peak_macs_per_cycle.get(kind, 0) <= 0:
            return f"no {kind} arithmetic (peak_macs_per_cycle.{kind} is 0 in its profile)"
        needed = (self.cpu_flags or {}).get(kind)
        if needed and self.backend == "local":
            from hardware_targets.host import host_cpu

            cpu = cpu or host_cpu()
            if not cpu.has_any(needed):
                return (f"no native {kind} arithmetic on this CPU ({cpu.model}: none of the flags "
                        f"{', '.join(needed)}; it would run in software)")
        return None


def arithmetic(precision: str) -> str:
    return "int8" if precision.startswith("int8") else precision


_NUM = (int, float)
# field -> (accepted types, required)
_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "backend": ((str,), True),
    "tvm_target": ((dict,), True),
    "description": ((str,), False),
    "cores": ((int,), False),
    "clock_mhz": (_NUM, False),
    "peak_macs_per_cycle": ((dict,), False),
    "efficiency": ((dict,), False),
    "memory_bandwidth_gbps": (_NUM, False),
    "op_overhead_us": (_NUM, False),
    "call_overhead_us": (_NUM, False),
    "sram_bytes": ((int,), False),
    "flash_bytes": ((int,), False),
    "runtime_ram_overhead_bytes": ((int,), False),
    "power_active_mw": (_NUM, False),
    "power_idle_mw": (_NUM, False),
    "energy_pj_per_mac": ((dict,), False),
    "energy_pj_per_byte": (_NUM, False),
    "unstructured_sparsity_speedup": ((bool,), False),
    "cpu_flags": ((dict,), False),
    "detect_host": ((bool,), False),
    "calibration_reference": ((dict,), False),
    "power_mw_per_core": ((dict,), False),
    "fp32_macs_per_cycle_by_family": ((dict,), False),
    "rpc": ((dict,), False),
    "cross_compiler": ((str,), False),
    "runtime": ((str,), False),
    "runtime_flash_bytes": ((int,), False),
    "tflm_kernels": ((str,), False),
}
_PER_PRECISION = ("peak_macs_per_cycle", "efficiency", "energy_pj_per_mac")
# mapping fields -> (accepted value types, what a value is, in words); their keys are text
_MAPPINGS: dict[str, tuple[tuple[type, ...], str]] = {
    "tvm_target": ((str, int, float, bool, list), "a TVM target attribute"),
    "power_mw_per_core": (_NUM, "a number of milliwatts"),
    "fp32_macs_per_cycle_by_family": (_NUM, "a number"),
    "calibration_reference": ((str,), "text"),
    "rpc": ((str, int), "a host, key (text) or port, timeout (a number)"),
}
_RPC_NUMBERS = ("port", "tracker_port", "timeout")
_EMULATOR_NEEDS = ("clock_mhz", "peak_macs_per_cycle", "efficiency", "power_active_mw")
# whether a model fits a microcontroller is judged on these: RAM holds the arena and the runtime's own; flash the
# model and the runtime's code. Left out, a model would be said to fit with the runtime missing from both sums.
_TFLM_NEEDS = ("sram_bytes", "flash_bytes", "runtime_ram_overhead_bytes", "runtime_flash_bytes")


def same_profile(a: TargetProfile, b: TargetProfile) -> bool:
    """Whether two loaded profiles describe the same device: a profile file copied or moved (a search's kept
    input, another machine) is the same target wherever it is read from."""
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


def available_profiles(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_profile(name_or_path: str | Path, directory: Path = PROFILE_DIR) -> TargetProfile:
    """Load a shipped profile by name, or any profile file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(directory) / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"Unknown target {str(name_or_path)!r}. Known targets: {', '.join(available_profiles(directory))} "
                "(or pass the path of a profile .yaml file)."
            )
    elif not path.is_file():
        raise ProfileError(f"Profile file {str(path)!r} does not exist"
                           + ("." if path.is_absolute() else f" (a relative path is read from {Path.cwd()})."))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({' '.join(str(exc).split())}).") from exc
    return _validate(data, path)


def _type_names(types: tuple[type, ...]) -> str:
    return "a number" if types == _NUM else " or ".join(t.__name__ for t in types)


def _validate(data: Any, path: Path) -> TargetProfile:
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a YAML mapping of fields; got {type(data).__name__}.")
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise ProfileError(f"{path}: field names must be text; got {odd!r} (a stray '?', a number or an empty key).")
    unknown = sorted(set(data) - set(_SCHEMA))
    if unknown:
        close = {key: difflib.get_close_matches(key, list(_SCHEMA), n=2, cutoff=0.6) for key in unknown}
        meant = "; ".join(f"{key}: did you mean {' or '.join(m)}?" for key, m in close.items() if m)
        raise ProfileError(f"{path}: unknown field(s) {unknown}" + (f" ({meant})" if meant else "")
                           + f"; known fields: {sorted(_SCHEMA)}.")
    for key, (types, required) in _SCHEMA.items():
        value = data.get(key)
        if value is None:
            if required:
                raise ProfileError(f"{path}: field '{key}' is required ({_type_names(types)}){_START_FROM}")
            continue
        bad_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or bad_bool:
            raise ProfileError(f"{path}: field '{key}' must be {_type_names(types)}; "
                               f"got {type(value).__name__} {value!r}.")
        if isinstance(value, _NUM) and not isinstance(value, bool) and value < 0:
            raise ProfileError(f"{path}: field '{key}' must be >= 0; got {value!r}.")
    for key, (types, what) in _MAPPINGS.items():
        for name, value in (data.get(key) or {}).items():
            if not isinstance(name, str) or not isinstance(value, types) or (isinstance(value, bool) and bool
                                                                                  not in types):
                raise ProfileError(f"{path}: field '{key}' maps names (text) to {what}; got {name!r}: {value!r}.")
    for name in _RPC_NUMBERS:
        value = (data.get("rpc") or {}).get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ProfileError(f"{path}: field 'rpc.{name}' must be a positive whole number; got {value!r}.")
    for key in _PER_PRECISION:
        value = data.get(key)
        if value is None:
            continue
        for p in PRECISION_KEYS:
            v = value.get(p)
            if p not in value:
                raise ProfileError(f"{path}: field '{key}' has no {p}: give each of {', '.join(PRECISION_KEYS)} "
                                   f"(0 for a precision the device has no arithmetic for).")
            if not isinstance(v, _NUM) or isinstance(v, bool) or v < 0:
                raise ProfileError(f"{path}: field '{key}.{p}' must be a number >= 0 (0 = unsupported); got {v!r}.")
    if data["backend"] not in BACKENDS:
        raise ProfileError(f"{path}: field 'backend' must be one of {list(BACKENDS)}; got {data['backend']!r}.")
    if data.get("runtime", "tvm") not in RUNTIMES:
        raise ProfileError(f"{path}: field 'runtime' must be one of {list(RUNTIMES)}; got {data['runtime']!r}.")
    if data.get("runtime") == "tflite-micro" and data["backend"] != "emulated":
        raise ProfileError(f"{path}: a tflite-micro profile is emulated (no board runs TFLite Micro over TVM RPC).")
    if "kind" not in data["tvm_target"]:
        raise ProfileError(f"{path}: field 'tvm_target' must have a 'kind' (e.g. llvm).")
    if data["backend"] == "emulated":
        missing = [k for k in _EMULATOR_NEEDS if data.get(k) is None]
        if missing:
            raise ProfileError(f"{path}: an emulated profile needs field(s) {missing}{_START_FROM}")
    if data.get("runtime") == "tflite-micro" and (missing := [k for k in _TFLM_NEEDS if data.get(k) is None]):
        raise ProfileError(f"{path}: a TFLite Micro board needs field(s) {missing}: whether a model fits its RAM "
                           "(arena + the runtime's overhead) and flash (model + the runtime's code) is judged on "
                           f"them{_START_FROM}")
    for p, flags in (data.get("cpu_flags") or {}).items():
        if p not in PRECISION_KEYS or not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise ProfileError(f"{path}: field 'cpu_flags' maps a precision ({', '.join(PRECISION_KEYS)}) to a list of "
                               f"CPU flag names; got {p!r}: {flags!r}.")
    for family, rate in (data.get("fp32_macs_per_cycle_by_family") or {}).items():
        if not isinstance(rate, _NUM) or isinstance(rate, bool) or rate <= 0:
            raise ProfileError(f"{path}: field 'fp32_macs_per_cycle_by_family' maps a CPU family (vendor_id and "
                               f"cpu family as /proc/cpuinfo shows them) to a positive number; got {family!r}: "
                               f"{rate!r}.")
    rpc = data.get("rpc") or {}
    if data["backend"] == "remote" and not (rpc.get("port") or all(rpc.get(k) for k in TRACKER_FIELDS)):
        raise ProfileError(f"{path}: a remote profile needs 'rpc' with the device's host and port, or "
                           f"{', '.join(TRACKER_FIELDS)} of an RPC tracker.")
    if data.get("detect_host"):
        if data["backend"] != "local":
            raise ProfileError(f"{path}: 'detect_host' describes the machine edgesearch runs on; it needs backend "
                               f"local, not {data['backend']!r}.")
        from hardware_targets.host import describe_host, host_cpu

        data = describe_host(data, host_cpu())
    names = {f.name for f in dataclasses.fields(TargetProfile)}
    return TargetProfile(**{k: v for k, v in data.items() if k in names}, source=str(path))
