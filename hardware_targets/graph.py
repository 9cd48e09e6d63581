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


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)
