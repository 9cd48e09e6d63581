"""Per-operator costs of an exported graph: multiply-accumulates and bytes moved.

Operators are grouped as the compiler fuses them: each Conv / Gemm / MatMul
absorbs the element-wise operators, (de)quantization and reshapes around it;
pooling stays its own operator. Weight bytes are counted at the deployed
precision; ``nonzero`` tracks how many weights an unstructured-sparse kernel
could skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ANCHORS = {"Conv", "Gemm", "MatMul"}
_OWN_OPS = {"GlobalAveragePool", "AveragePool", "MaxPool", "Softmax"}


@dataclass(frozen=True)
class OpCost:
    op: str
    macs: int
    weights: int
    nonzero_weights: int
    activation_elems: int  # input + output elements


def _shapes(model) -> dict[str, tuple[int, ...]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    shapes = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _weight_values(model) -> dict[str, np.ndarray]:
    """Initializers, with DequantizeLinear outputs of weights mapped back to their stored tensors."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    for node in model.graph.node:  # follow weight -> (Quantize) -> Dequantize chains
        if node.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast", "Identity") and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def op_costs(onnx_path: str | Path) -> list[OpCost]:
    import onnx

    model = onnx.load(str(onnx_path))
    shapes = _shapes(model)
    weights = _weight_values(model)
    costs = []
    for node in model.graph.node:
        if node.op_type not in _ANCHORS | _OWN_OPS:
            continue
        out = shapes.get(node.output[0], ())
        x = shapes.get(node.input[0], ())
        out_elems = int(np.prod(out)) if out else 0
        act = int(np.prod(x)) + out_elems if x else out_elems
        macs = wcount = nonzero = 0
        if node.op_type == "Conv":
            w = weights.get(node.input[1])
            wshape = w.shape if w is not None else shapes.get(node.input[1], ())
            per_output = int(np.prod(wshape[1:])) if wshape else 0  # (C_in / groups) * kernel
            macs = out_elems * per_output
            wcount = int(np.prod(wshape)) if wshape else 0
            nonzero = int(np.count_nonzero(w)) if w is not None else wcount
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights.get(node.input[1])
            wshape = w.shape if w is not None else shapes.get(node.input[1], ())
            inner = int(wshape[0]) if node.op_type == "MatMul" or not _trans_b(node) else int(wshape[1])
            macs = out_elems * inner
            wcount = int(np.prod(wshape)) if wshape else 0
            nonzero = int(np.count_nonzero(w)) if w is not None else wcount
        else:
            macs = int(np.prod(x)) if x else 0  # one add per input element
        costs.append(OpCost(node.op_type, macs, wcount, nonzero, act))
    return costs


def tflite_op_costs(tflite_path: str | Path) -> list[OpCost]:
    """Per-operator costs of a ``.tflite`` as TensorFlow Lite Micro runs it: one entry per operator of the
    flatbuffer (TFLM fuses nothing, so the PAD, RESHAPE and MEAN the converter wrote each cost a dispatch), with
    the multiply-accumulates of convolutions, depthwise convolutions and fully connected layers."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(tflite_path).read_bytes(), 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {schema.TensorType.INT8: np.int8, schema.TensorType.FLOAT32: np.float32,
              schema.TensorType.INT32: np.int32, schema.TensorType.FLOAT16: np.float16}
    graph = model.subgraphs[0]
    costs = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        inputs = [graph.tensors[i] for i in op.inputs if i >= 0]
        out_elems = int(np.prod(graph.tensors[op.outputs[0]].shape))
        in_elems = int(np.prod(inputs[0].shape)) if inputs else 0
        macs = wcount = nonzero = 0
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(inputs) > 1:
            w = inputs[1]
            shape = [int(d) for d in w.shape]
            # CONV_2D [O, KH, KW, I] and FULLY_CONNECTED [O, I]: all but the first dim per output;
            # DEPTHWISE_CONV_2D [1, KH, KW, C * multiplier]: the kernel window per output
            per_output = int(np.prod(shape[1:3] if name == "DEPTHWISE_CONV_2D" else shape[1:]))
            macs = out_elems * per_output
            wcount = int(np.prod(shape))
            data = model.buffers[w.buffer].data
            nonzero = (int(np.count_nonzero(np.frombuffer(bytes(data), dtype=dtypes.get(w.type, np.int8))))
                       if data is not None and len(data) else wcount)
        elif name in ("MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D", "SOFTMAX", "SUM"):
            macs = in_elems  # one add (or compare) per input element
        costs.append(OpCost(name, macs, wcount, nonzero, in_elems + out_elems))
    return costs


def graph_precision(path: str | Path) -> str:
    """The arithmetic a ``.onnx`` or ``.tflite`` file computes in, read from its weights: int8 where they are
    stored quantised (QDQ nodes, int8 tensors), fp16 where they are half floats, else fp32."""
    if Path(path).suffix == ".tflite":
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(path).read_bytes(), 0))
        types = {t.type for t in model.subgraphs[0].tensors}
        return ("int8" if schema.TensorType.INT8 in types else
                "fp16" if schema.TensorType.FLOAT16 in types else "fp32")
    import onnx

    model = onnx.load(str(path))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in model.graph.node):
        return "int8"
    return "fp16" if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) else "fp32"


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)
