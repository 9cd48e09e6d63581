"""Model size: bytes of the deployable files and of the weights they store."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def weight_bytes(onnx_path: str | Path) -> dict[str, int]:
    """Bytes of the stored weights and how many weight values are non-zero.

    Counts every initializer as stored (int8 = 1 byte, fp16 = 2). Unstructured
    zeros still cost their bytes in a dense format; ``nonzero_weights`` shows how
    much a sparse format could save.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    total = nonzero = count = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        total += arr.nbytes
        if arr.ndim >= 2:  # weight tensors; scales, zero points and biases are 0-/1-D
            count += arr.size
            nonzero += int(np.count_nonzero(arr))
    return {"weight_bytes": total, "weights": count, "nonzero_weights": nonzero}


def file_bytes(path: str | Path) -> int:
    return Path(path).stat().st_size
