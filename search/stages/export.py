"""Export stage: the trained model as an ONNX graph at the candidate's precision.

- fp32: the float graph as is;
- fp16: weights and activations in float16 (the model is cast before export);
- int8-ptq: onnxruntime's static quantization in QDQ format, calibrated on training data;
- int8-qat: the fake-quantized torch model exported as QuantizeLinear/DequantizeLinear pairs.

Every graph is checked with ``onnx.checker`` and run once in onnxruntime.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from search.candidate import Candidate
from search.data import Dataset
from search.errors import CandidateError

OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "logits"


def input_dtype(precision: str) -> np.dtype:
    return np.dtype(np.float16) if precision == "fp16" else np.dtype(np.float32)


def _torch_export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), opset_version=OPSET, dynamo=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        )


class _CalibrationReader(CalibrationDataReader):
    """Feeds training samples, one per call, to onnxruntime's calibrator."""

    def __init__(self, x: np.ndarray):
        self._samples = iter(x[:, None])

    def get_next(self):
        sample = next(self._samples, None)
        return None if sample is None else {INPUT_NAME: sample}


def _quantize_ptq(fp32_path: Path, out_path: Path, dataset: Dataset, samples: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = min(max(1, samples), len(dataset.x_train))
    quantize_ptq(fp32_path, out_path, dataset.x_train[rng.choice(len(dataset.x_train), n, replace=False)])


def quantize_ptq(fp32_path: Path, out_path: Path, calibration: np.ndarray) -> Path:
    """The int8-ptq graph of an fp32 ONNX file, calibrated on ``calibration`` (samples without a batch axis)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
    try:
        # reduce_range: 7-bit weights. On x86 without VNNI onnxruntime multiplies u8 activations by s8 weights in
        # 16-bit pairs (vpmaddubsw), which saturate at 255 x 127 x 2; with 7-bit weights they cannot, so
        # onnxruntime and TVM (which computes the QDQ graph in float) agree on every x86 CPU, and the artifact
        # does not depend on the CPU that built it. Its accuracy cost is in NOTES.md. per_channel: a scale for each
        # output channel, as onnxruntime's docs recommend; one scale per tensor took a pruned, distilled mnist1d
        # model from 0.95 to 0.32 accuracy (NOTES.md), at a few bytes of scales a channel.
        quantize_static(
            str(fp32_path), str(out_path), _CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
        )
    finally:
        root.setLevel(level)
    return Path(out_path)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each batch norm that follows a convolution in a ``nn.Sequential`` into it, in place, in the model's
    precision. Before a cast to fp16: on raw pixel values (0-255) a stem convolution's running variance passes
    fp16's largest value (65504), becomes infinite, and folds into all-zero weights; two of three fp16 candidates of a
    32x32 RGB search then scored 0.10 (NOTES.md)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequential)
        for i in range(len(layers) - 1):
            conv, norm = layers[i], layers[i + 1]
            if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(norm, nn.modules.batchnorm._BatchNorm):
                sequential[i] = fuse_conv_bn_eval(conv.eval(), norm.eval())
                sequential[i + 1] = nn.Identity()
    return model


def export_onnx(model: nn.Module, candidate: Candidate, dataset: Dataset, path: Path) -> Path:
    """Write ``model`` to ``path`` as ONNX for batch size 1 and check it runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(dataset.x_train[:1])
    model = model.eval()
    try:
        if candidate.precision == "fp16":
            _torch_export(fold_batchnorm(copy.deepcopy(model)).half(), example.half(), path)
        elif candidate.precision == "int8-ptq":
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                _torch_export(model, example, fp32)
                _quantize_ptq(fp32, path, dataset, candidate.budget.calibration_samples, candidate.seed)
        else:  # fp32, and int8-qat whose model already carries its fake-quant modules
            _torch_export(model, example, path)
            if candidate.precision == "int8-qat":
                store_quantized_weights(path)
        check_onnx(path, dataset.x_train[:1].astype(input_dtype(candidate.precision)))
    except CandidateError:
        raise
    except Exception as exc:
        raise CandidateError("export", f"{type(exc).__name__}: {exc}") from exc
    return path


def store_quantized_weights(path: Path) -> int:
    """Store each weight that a QAT export quantizes in the graph (float weight -> QuantizeLinear) as the integers
    that QuantizeLinear computes, and drop the node; returns how many were stored.

    torch exports a fake-quantized weight as float, so the file was as large as fp32 although every runtime
    uses only the integers. The arithmetic is ONNX's QuantizeLinear: divide by the scale, round half to even, add the
    zero point, saturate; the graph's outputs do not change (tests/search/test_stages.py compares them in
    onnxruntime)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1

    def constant(name: str) -> np.ndarray | None:
        while name in aliases:
            name = aliases[name]
        return numpy_helper.to_array(initializers[name]) if name in initializers else None

    stored = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers or uses[node.input[0]] != 1:
            continue
        weight, scale = numpy_helper.to_array(initializers[node.input[0]]), constant(node.input[1])
        zero_point = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.uint8(0)
        if weight.dtype != np.float32 or scale is None or zero_point is None:
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        per_channel = [1] * weight.ndim
        per_channel[axis % weight.ndim] = -1

        def along_axis(a: np.ndarray) -> np.ndarray:  # one value per channel, or one for all
            a = np.asarray(a, dtype=np.float32)
            return a.reshape(per_channel) if a.size > 1 else a

        limits = np.iinfo(zero_point.dtype)
        q = np.rint(weight / along_axis(scale)) + along_axis(zero_point)
        stored.append((node, numpy_helper.from_array(np.clip(q, limits.min, limits.max).astype(zero_point.dtype),
                                                     node.output[0])))
    for node, integers in stored:
        graph.node.remove(node)
        graph.initializer.remove(initializers[node.input[0]])
        graph.initializer.append(integers)
    if stored:
        onnx.save(model, str(path))
    return len(stored)


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(path: Path, sample: np.ndarray) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        out = ort_session(path).run(None, {INPUT_NAME: sample})[0]
    except Exception as exc:
        raise CandidateError("export", f"ONNX check failed for {path.name}: {exc}") from exc
    if not np.isfinite(out.astype(np.float32)).all():
        raise CandidateError("export", f"{path.name} produces non-finite outputs in onnxruntime")
