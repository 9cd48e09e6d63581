"""Peak activation memory, estimated from a liveness plan over the ONNX graph.

Tensors are allocated when produced and freed after their last consumer, in
the graph's topological order; weights, and values computed from weights only
(dequantized weights, constants), are excluded: they live in flash. Element-wise
operators are fused into their producer as the compiler does (TVM fuses conv +
bias + ReLU and the (de)quantization around them): when such an operator is the
last user of its input, it writes in place and allocates nothing new.
This is an estimate of what a static memory planner needs, not a measurement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


_FUSED = {"Relu", "Clip", "Add", "Mul", "Sigmoid", "QuantizeLinear", "DequantizeLinear", "Identity", "Cast",
          "Reshape", "Flatten", "BatchNormalization"}


def _tensor_bytes(value_info) -> int:
    from onnx import helper

    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize


def peak_activation_bytes(onnx_path: str | Path) -> int:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    sizes = {vi.name: _tensor_bytes(vi) for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = i
    outputs = {o.name for o in graph.output}
    live = {vi.name for vi in graph.input if vi.name not in weights}
    current = sum(sizes.get(n, 0) for n in live)
    peak = current
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" or all(n in weights for n in node.input if n):
            weights.update(node.output)  # computed from weights only (e.g. dequantized weights): folded at compile time
            continue
        source = node.input[0] if node.input else ""
        if (node.op_type in _FUSED and source in live and last_use.get(source) == i and len(node.output) == 1
                and sizes.get(node.output[0], 0) <= sizes.get(source, 0) and source not in outputs):
            live.discard(source)  # computed in place, inside the producer's fused kernel
            current -= sizes.get(source, 0)
        for name in node.output:
            if name and name not in weights:
                live.add(name)
                current += sizes.get(name, 0)
        peak = max(peak, current)
        for name in list(live):
            if last_use.get(name, -1) <= i and name not in outputs:
                live.discard(name)
                current -= sizes.get(name, 0)
    return int(peak)


def over_limits(values: dict[str, float], limits: dict[str, int | None]) -> list[str]:
    """Which of a target's memories (``ram_bytes``, ``flash_bytes`` in ``limits``) ``values`` do not fit, in words."""
    return [f"{name.split('_')[0]} {values[name] / 1024:,.0f} KiB > {limit / 1024:,.0f} KiB"
            for name, limit in limits.items() if limit and name in values and values[name] > limit]
