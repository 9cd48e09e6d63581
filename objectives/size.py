"""Model size: bytes of the deployable files and of the weights they store."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def weight_bytes(onnx_path: str | Path) -> dict[str, int]:
    """Bytes of the stored weights and how many weight values are non-zero.

    Counts every initializer as stored (int8 = 1 byte, fp16 = 2), except a float
    weight whose only use is a QuantizeLinear: a QAT export keeps such weights in
    float, and the quantization of a constant folds away at compile time, so it is
    counted at the quantized width it is deployed with. Neither is the scale or
    zero point of an int32 bias counted: a runtime derives them (input scale
    times weight scale, zero) and stores the bias alone (onnxruntime's
    QLinearConv), or folds it into a float bias (TVM). Unstructured zeros still
    cost their bytes in a dense format; ``nonzero_weights`` shows how much a
    sparse format could save.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {i.name: i for i in model.graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def quantized_itemsize(name: str) -> int | None:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or users[0].input[0] != name:
            return None
        if len(users[0].input) < 3 or not users[0].input[2]:
            return 1  # no zero point: uint8
        zero_point = users[0].input[2]
        while zero_point in aliases:
            zero_point = aliases[zero_point]
        return numpy_helper.to_array(initializers[zero_point]).itemsize if zero_point in initializers else None

    def derived_bias_parameter(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(
            node.op_type == "DequantizeLinear" and name in node.input[1:] and node.input[0] in initializers
            and initializers[node.input[0]].data_type == onnx.TensorProto.INT32 for node in users)

    total = nonzero = count = 0
    for init in model.graph.initializer:
        if derived_bias_parameter(init.name):
            continue
        arr = numpy_helper.to_array(init)
        itemsize = quantized_itemsize(init.name) if arr.dtype.kind == "f" else None
        if itemsize:
            total += arr.size * itemsize
        else:
            total += arr.nbytes
        if arr.ndim >= 2:  # weight tensors; scales, zero points and biases are 0-/1-D
            count += arr.size
            nonzero += int(np.count_nonzero(arr))
    return {"weight_bytes": total, "weights": count, "nonzero_weights": nonzero}


def file_bytes(path: str | Path) -> int:
    return Path(path).stat().st_size


def gzipped(path: str | Path) -> bytes:
    """The file gzip-compressed (level 9, no name or time in the header, so a file always compresses to the same
    bytes): how it is stored or sent. The one size that unstructured zeros lower, since every runtime here holds
    weights dense. A bitmask of the zeros beside the other values, deflated, came out only 1.1-1.2x smaller again
    on pruned models (50-90%), so gzip is the compressed form."""
    import gzip

    return gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0)


def gzip_bytes(path: str | Path) -> int:
    return len(gzipped(path))


SHF_ALLOC = 0x2
SHT_NOBITS = 8


def _elf_loaded_bytes(data: bytes) -> int:
    """Bytes of an ELF file's sections that occupy memory and come from the file (code, constants, initialised
    data; not .bss, symbols or debug information): what a device keeps in flash."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    wide, order = data[4] == 2, "little" if data[5] == 1 else "big"

    def num(offset: int, size: int) -> int:
        return int.from_bytes(data[offset:offset + size], order)

    shoff, shentsize, shnum = (num(0x28, 8), num(0x3A, 2), num(0x3C, 2)) if wide else \
        (num(0x20, 4), num(0x2E, 2), num(0x30, 2))
    total = 0
    for i in range(shnum):
        h = shoff + i * shentsize
        sh_type = num(h + 4, 4)
        flags, size = (num(h + 8, 8), num(h + 32, 8)) if wide else (num(h + 8, 4), num(h + 20, 4))
        if flags & SHF_ALLOC and sh_type != SHT_NOBITS:
            total += size
    return total


def flash_bytes(library: str | Path) -> int:
    """Code and constants of a compiled library (an ELF shared object, or a .tar of object files), counted from the
    file's section headers."""
    import tarfile

    path = Path(library)
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            return sum(_elf_loaded_bytes(tar.extractfile(m).read()) for m in tar.getmembers()
                       if m.isfile() and m.name.endswith(".o"))
    return _elf_loaded_bytes(path.read_bytes())
