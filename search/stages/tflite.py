"""TensorFlow Lite Micro stage: what a microcontroller profile ships.

TVM 0.27 has no microcontroller runtime (microTVM, its C runtime and AOT executor were removed upstream), so a
profile whose ``runtime`` is ``tflite-micro`` ships a ``.tflite`` flatbuffer for TensorFlow Lite Micro instead:
float32, or fully integer int8 (int8 input and output, per-channel weights) through PyTorch 2 export
quantization. Accuracy and the tensor arena come from running that file in the TFLM interpreter on the host,
whose reference kernels CMSIS-NN and ESP-NN match bit for bit by design.

The interpreter (``tflite-micro``) is the ``mcu`` extra; the converter (``litert-torch``) pins packages TVM's
FFI cannot live with, so it runs in its own environment (``.venv-mcu``, made by ``make setup``) on a saved
``torch.export`` program (``tflite_convert.py``).
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

import numpy as np
import torch

from hardware_targets.profile import TFLM_PRECISIONS
from search.candidate import Candidate
from search.data import Dataset
from search.errors import CandidateError, ConfigError
from search.stages.native import fds_to, quiet_native

ARENA_ALIGNMENT = 16  # TFLM aligns its arena to 16 bytes; the export rounds the arena up to it


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"Microcontroller profiles need the TFLite Micro interpreter ({module} is missing): "
                          "`make setup` installs it (`pip install -e '.[mcu]'`).") from exc


def converter_python() -> Path:
    """The Python of the converter's environment: $EDGESEARCH_MCU_PYTHON, else the checkout's ``.venv-mcu``."""
    configured = os.environ.get("EDGESEARCH_MCU_PYTHON")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / ".venv-mcu" / "bin" / "python"
    if not path.is_file():
        raise ConfigError(f"The TFLite converter's environment is missing ({path}): `make setup` creates it, or set "
                          "EDGESEARCH_MCU_PYTHON to a Python with torch==2.13.0 and litert-torch (requirements-mcu.lock).")
    return path


ANSWER = "edgesearch-converter: "  # how the converter's answers start on its stdout


class _Converter:
    """The converter's process (``tflite_convert.py --serve``), kept for the next candidates of this process: a cold
    start imports litert-torch and TensorFlow, about as long as a conversion. It ends when this process closes its
    stdin, or dies; a converter that crashed is started afresh by the next conversion."""

    def __init__(self, python: Path):
        import subprocess
        import tempfile

        self.log = tempfile.TemporaryFile()  # its stderr: a pipe nobody reads would fill and stall it
        self.proc = subprocess.Popen([str(python), str(Path(__file__).with_name("tflite_convert.py")), "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def convert(self, *args: str) -> tuple[str | None, bool]:
        """Convert: (None, False) when done, else the error and whether the converter died (its last line)."""
        import json

        logged = os.fstat(self.log.fileno()).st_size
        try:
            self.proc.stdin.write(json.dumps(args) + "\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:  # an answer, after anything printed before the converter took stdout
                if line.startswith(ANSWER):
                    return json.loads(line[len(ANSWER):]).get("error"), False
        except BrokenPipeError:
            pass
        self.proc.wait()
        tail = os.pread(self.log.fileno(), 1 << 16, logged).decode(errors="replace").strip().splitlines()
        lines = [ln for ln in tail if ln.strip()]
        return (lines[-1] if lines else f"the converter exited with {self.proc.returncode}"), True

    def close(self) -> None:
        import subprocess

        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


_converters: dict[Path, _Converter] = {}
_converters_lock = threading.Lock()


@atexit.register
def _close_converters() -> None:
    for converter in _converters.values():
        converter.close()


def _convert_program(program: Path, out: Path, kind: str, samples: Path) -> str | None:
    """Run one conversion in this process's converter; its error, or None. A converter found dead (or dying
    during the conversion) is replaced and the conversion tried once more, so one crash fails one candidate."""
    python = converter_python()
    with _converters_lock:
        for _ in range(2):
            converter = _converters.get(python)
            if converter is None:
                converter = _converters[python] = _Converter(python)
            error, died = converter.convert(str(program), str(out), kind, str(samples))
            if not died:
                return error
            converter.log.close()
            del _converters[python]
    return error


class ChannelLast(torch.nn.Module):
    """A trained model as the converter takes it: channel-last input, the order a camera or an interleaved sensor
    buffer delivers and TFLite computes in, turned channel-first once for the model's NCHW graph, which the
    converter folds into its own layout (a channel-first input would cost the device a TRANSPOSE first).

    A signal model runs planar, as its 2-D twin on a (1, L) image (``planar``): converted as 1-D, it took a
    TRANSPOSE before its mean and, with more than one channel, two more around a RESHAPE at its input."""

    def __init__(self, model: torch.nn.Module, planar: bool):
        super().__init__()
        self.model, self.planar = model, planar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.unsqueeze(1) if self.planar else x).permute(0, 3, 1, 2))


def _conv_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A Conv2d of kernel (1, k) computing what a 1-D convolution does, with its ReLU where a fused QAT module
    (``ConvReLU1d``, a Conv1d subclass) applies one, and the weight its fake quantization gives."""
    import torch.ao.nn.intrinsic.qat as fused
    from torch import nn

    twin = nn.Conv2d(module.in_channels, module.out_channels, (1, module.kernel_size[0]),
                     stride=(1, module.stride[0]), padding=(0, module.padding[0]), dilation=(1, module.dilation[0]),
                     groups=module.groups, bias=module.bias is not None, padding_mode=module.padding_mode)
    with torch.no_grad():
        weight = module.weight_fake_quant(module.weight) if type(module) is not nn.Conv1d else module.weight
        twin.weight.copy_(weight.unsqueeze(2))
        if module.bias is not None:
            twin.bias.copy_(module.bias)
    return nn.Sequential(twin, nn.ReLU()) if type(module) is fused.ConvReLU1d else twin


def as_planar(model: torch.nn.Module) -> torch.nn.Module:
    """The 2-D twin of a 1-D model, in place: each 1-D convolution a Conv2d of kernel (1, k), each 1-D batch norm
    and adaptive average pool its 2-D kind, the same weights. Other 1-D layers, and subclasses of these whose
    forward may differ, are refused: each would need a rule."""
    import torch.ao.nn.intrinsic.qat as fused
    import torch.ao.nn.qat as qat
    from torch import nn

    for name, module in list(model.named_modules()):
        if type(module) in (nn.Conv1d, qat.Conv1d, fused.ConvReLU1d):
            twin = _conv_twin(module)
        elif type(module) is nn.BatchNorm1d:
            twin = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine)
            twin.load_state_dict(module.state_dict())
        elif type(module) is nn.AdaptiveAvgPool1d:
            size = module.output_size if isinstance(module.output_size, int) else module.output_size[0]
            twin = nn.AdaptiveAvgPool2d((1, size))
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)) or (
                type(module).__name__.endswith("1d") and not list(module.children())):
            raise CandidateError("convert", f"no 2-D twin for {type(module).__name__} ({name})")
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, twin.eval())
    return model


def convert_tflite(model: torch.nn.Module, candidate: Candidate, dataset: Dataset, path: Path) -> Path:
    """Convert the trained (pruned) model to ``path``: float32 for fp32, fully integer int8 for int8-ptq and
    int8-qat (the QAT model's trained weights, ``qat_as_float``), its activation ranges calibrated on
    ``candidate.budget.calibration_samples`` training samples, one at a time (batch 1, as deployed).

    The model crosses to the converter's environment as a ``torch.export`` program of ``ChannelLast``, its batch
    norms folded into the convolutions first: the converter folds a 2-D batch norm itself, but wrote a 1-D one as a
    MUL and an ADD between TRANSPOSEs, which with the 1-D convolutions' own took an fp32 signal model from 12
    operators to 53 (each a dispatch on the board)."""
    import copy
    import tempfile

    from search.stages.compress import qat_as_float
    from search.stages.export import fold_batchnorm

    if candidate.precision not in TFLM_PRECISIONS:
        raise CandidateError("convert", f"{candidate.precision} candidates are not converted to TFLite Micro "
                             f"(converted: {', '.join(TFLM_PRECISIONS)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    model = qat_as_float(model) if candidate.precision == "int8-qat" else fold_batchnorm(copy.deepcopy(model))
    planar = len(dataset.sample_shape) == 2
    module = ChannelLast(as_planar(model) if planar else model, planar).eval()
    rng = np.random.default_rng(candidate.seed)
    count = min(len(dataset.x_train), max(1, candidate.budget.calibration_samples))
    samples = dataset.x_train[np.sort(rng.choice(len(dataset.x_train), size=count, replace=False))]
    samples = np.ascontiguousarray(np.moveaxis(samples, 1, -1))
    with tempfile.TemporaryDirectory() as tmp:
        program, sample_file = Path(tmp) / "model.pt2", Path(tmp) / "samples.npy"
        with torch.no_grad():
            torch.export.save(torch.export.export(module, (torch.from_numpy(samples[:1]),)), str(program))
        np.save(sample_file, samples)
        error = _convert_program(program, path, "fp32" if candidate.precision == "fp32" else "int8", sample_file)
    if error or not path.is_file():
        raise CandidateError("convert", error or "the converter wrote no file")
    return path


def interpreter(path: Path, arena_bytes: int | None = None):
    """A TFLM interpreter over ``path`` with a generous arena unless one is given. An arena too small makes TFLM
    fail in a way that can crash the process later, so sizes that may not fit are tried by ``allocates``."""
    runtime = _require("tflite_micro.python.tflite_micro.runtime")
    size = arena_bytes or max(10 * Path(path).stat().st_size, 1 << 20) + unplanned_tensor_bytes(path)
    with quiet_native():
        return runtime.Interpreter.from_file(str(path), arena_size=size)


def constant_bytes(path: Path) -> int:
    """Bytes of the constant tensors' data (weights and biases) as the ``.tflite`` stores them, each buffer once:
    what the model's parameters take in flash. The ONNX graph's count would differ by precision path (QAT's ONNX
    has a scale per tensor, the .tflite one per channel for PTQ and QAT alike)."""
    schema = _require("tflite_micro.tensorflow.lite.micro.python.schema_py_generated")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(path).read_bytes(), 0))
    used = {tensor.buffer for graph in model.subgraphs or [] for tensor in graph.tensors or []
            if 0 < tensor.buffer < len(model.buffers)}
    return sum(len(model.buffers[b].data) for b in used if model.buffers[b].data is not None)


def unplanned_tensor_bytes(path: Path) -> int:
    """Bytes of every tensor of the ``.tflite`` without constant data, as if none shared memory: more than TFLM's
    planner, which reuses, puts in the arena. A long 1-D input makes these dwarf the weights (16,000 samples at
    width 1.5: 3 MB of activations beside 20 KB of file), so an arena sized from the file alone fails to allocate."""
    schema = _require("tflite_micro.tensorflow.lite.micro.python.schema_py_generated")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(path).read_bytes(), 0))
    widths = {schema.TensorType.INT8: 1, schema.TensorType.UINT8: 1, schema.TensorType.BOOL: 1,
              schema.TensorType.INT16: 2, schema.TensorType.FLOAT16: 2, schema.TensorType.INT64: 8}
    total = 0
    for graph in model.subgraphs or []:
        for tensor in graph.tensors or []:
            data = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
            if data is None or not len(data):
                elements = int(np.prod([max(1, int(d)) for d in (tensor.shape if tensor.shape is not None else [])]))
                total += elements * widths.get(tensor.type, 4)
    return total


def _run_once(it) -> None:
    details = it.get_input_details(0)
    it.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
    it.invoke()


def allocates(path: Path, arena: int) -> bool:
    """Whether TFLM can allocate and run the model in ``arena`` bytes; tried in a process of its own."""
    import subprocess
    import sys

    probe = ("import sys, numpy as np; from tflite_micro.python.tflite_micro import runtime; "
             "it = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2])); "
             "d = it.get_input_details(0); it.set_input(np.zeros(d['shape'], d['dtype']), 0); it.invoke()")
    return subprocess.run([sys.executable, "-c", probe, str(path), str(int(arena))], capture_output=True).returncode == 0


def recorded_arena(path: Path) -> int:
    """What TFLM's recording allocator reports using after an inference (head + tail of the arena). The temporary
    allocations of preparation come on top while it runs, so the arena needed can be larger."""
    import re
    import tempfile

    it = interpreter(path)
    _run_once(it)
    with tempfile.TemporaryFile() as log:
        with fds_to(log, fds=(2,)):  # the recording allocator prints to stderr
            it.print_allocations()
        log.seek(0)
        found = re.search(rb"Arena allocation total (\d+) bytes", log.read())
    if not found:
        raise CandidateError("convert", "TFLM's recording allocator reported no arena total")
    return int(found.group(1))


def arena_bytes(path: Path) -> int:
    """The smallest tensor arena in which the TFLM interpreter allocates this model and runs it: bisection over
    real allocations (each in its own process) from what the recording allocator reports. Measured by the runtime
    itself, not estimated from the graph. Most models need just what the recording reports; two allocations show
    it, where the bisection takes a dozen (each a process of its own: about 0.4 s)."""
    recorded = recorded_arena(path)
    if allocates(path, recorded) and not allocates(path, recorded - 1):
        return recorded
    low, high = max(256, recorded * 3 // 4), recorded * 3 // 2 + 1024
    if allocates(path, low):
        return low
    while not allocates(path, high):
        low, high = high, 2 * high
        if high > 1 << 31:
            raise CandidateError("convert", "TFLM could not allocate the model in 2 GiB")
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if allocates(path, mid) else (mid, high)
    return high


def predict_tflm(path: Path, x: np.ndarray, arena: int | None = None) -> np.ndarray:
    """Class predictions of the ``.tflite`` in the TFLM interpreter for channel-first samples ``x`` (as edgesearch
    reads data), fed as the device code feeds them (``model_inputs``), one at a time."""
    it = interpreter(path, arena)
    return _outputs(it, _as_input(it.get_input_details(0), x)).argmax(axis=1)


def model_inputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Channel-first samples ``x`` as the ``.tflite`` takes them: in its axis order, and for an int8 input quantised
    as main.cc's QuantizeInput does (x / scale in float32, rounded half away from zero as ``std::lround``, plus the
    zero point, saturated), so the host feeds the interpreter exactly what the board feeds it."""
    return _as_input(interpreter(path).get_input_details(0), x)


def tflm_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    """The raw output tensor of the ``.tflite`` (int8 or float, as the board reads it) for each of ``inputs``,
    given as the model takes them (``model_inputs``): shape (N, classes)."""
    return _outputs(interpreter(path), inputs)


def _as_input(details: dict, x: np.ndarray) -> np.ndarray:
    dtype = details["dtype"]
    if takes_channels_last(details["shape"], x.shape[1:]):
        x = np.moveaxis(x, 1, -1)
    if not np.issubdtype(dtype, np.integer):
        return np.ascontiguousarray(x, dtype=dtype)
    quant = details["quantization_parameters"]
    scale, zero = np.float32(quant["scales"][0]), int(quant["zero_points"][0])
    ratio = (x.astype(np.float32) / scale).astype(np.float64)  # float64: |r| + 0.5 is exact for a float32 r
    info = np.iinfo(dtype)
    return np.clip(np.sign(ratio) * np.floor(np.abs(ratio) + 0.5) + zero, info.min, info.max).astype(dtype)


def _outputs(it, inputs: np.ndarray) -> np.ndarray:
    """One invocation per sample, with a batch of one, as the board runs the model."""
    out = []
    for sample in inputs:
        it.set_input(np.ascontiguousarray(sample[None]), 0)
        it.invoke()
        out.append(np.array(it.get_output(0)).reshape(-1))
    return np.stack(out)


def takes_channels_last(shape, sample_shape: tuple[int, ...]) -> bool:
    """Whether a model with input ``shape`` takes channel-first samples of ``sample_shape`` channel-last, as every
    .tflite converted here does (those converted before took them channel-first)."""
    return tuple(int(d) for d in shape[1:]) == (*sample_shape[1:], sample_shape[0])


def c_array(path: Path, name: str = "g_model") -> tuple[str, str]:
    """``model_data.h`` and ``model_data.cc`` holding the flatbuffer as an aligned C array, as TFLM examples do."""
    data = Path(path).read_bytes()
    header = (f"// {Path(path).name}: {len(data)} bytes. Generated by edgesearch export.\n#pragma once\n\n"
              f"#include <cstddef>\n\nextern const unsigned char {name}[];\nextern const size_t {name}_len;\n")
    rows = ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12))
    source = (f'#include "model_data.h"\n\n// TFLM reads the flatbuffer in place: keep it 16-byte aligned.\n'
              f"alignas(16) const unsigned char {name}[] = {{\n{rows}\n}};\nconst size_t {name}_len = {len(data)};\n")
    return header, source


def op_names(path: Path) -> list[str]:
    """The builtin operators the model uses: what the device's op resolver must register."""
    from hardware_targets.graph import tflite_op_costs

    return sorted({op.op for op in tflite_op_costs(path)})
