"""Integer kernels for int8 graphs on CPUs with VNNI.

TVM imports a QDQ graph as float: every convolution dequantizes its uint8 input and int8 weights and multiplies
in fp32, which is why int8 ran slower than fp32 in TVM. A pointwise (1x1) convolution, most of a
depthwise-separable network's MACs, is a matrix product; rewritten as uint8 x int8 with int32 accumulation
and scaled back to float after, it computes exactly the integers onnxruntime's QLinearConv computes, and
MetaSchedule tensorizes it with VNNI's 4-way dot product (``vpdpbusd``). Other convolutions stay float.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import numpy as np

VNNI_FEATURE = "avx512vnni"
TENSOR_INTRIN = "tvm.s_tir.tensor_intrin"
X86_INTRIN = TENSOR_INTRIN + ".x86"
LANES_OUT, LANES_IN = 16, 4  # VNNI's 512-bit dot product: 16 int32 sums, each of 4 uint8 x int8 products


def x86_cpu(target: Any) -> bool:
    """True for an LLVM target that names an x86 CPU (its triple, else this machine's)."""
    from tvm.target import codegen

    if target.kind.name != "llvm" or not target.attrs.get("mcpu"):
        return False
    triple = str(target.attrs.get("mtriple") or codegen.llvm_get_system_triple())
    return triple.startswith(("x86_64", "i686", "i386"))


def integer_kernels_apply(target: Any) -> bool:
    """True where the TVM target's CPU has VNNI, the instruction the rewritten products are tuned for: an x86
    target that names its CPU. LLVM is asked only then (asked of a triple it does not know, it aborts)."""
    from tvm.target import codegen

    return x86_cpu(target) and bool(codegen.target_has_features(VNNI_FEATURE, target))


def tensor_intrin_stand_in() -> types.ModuleType:
    """TVM's tensor-intrinsic package without its ``__init__`` run: that registers every target's intrinsics
    (parsing hundreds of TVMScript functions, 38 s on our 2-core machines, CUDA's alone 25 s), where one of its
    modules can be imported on its own beneath this. Marked, so that it is never taken for the real package."""
    module = importlib.util.module_from_spec(importlib.util.find_spec(TENSOR_INTRIN))
    module.edgesearch_stand_in = True
    return module


def import_x86_intrinsics() -> types.ModuleType:
    """TVM's x86 tensor intrinsics (VNNI's and AVX-512's dot products), registered without the other targets'."""
    if X86_INTRIN in sys.modules:
        return sys.modules[X86_INTRIN]
    if TENSOR_INTRIN in sys.modules:  # the package, or a stand-in for it
        return importlib.import_module(X86_INTRIN)
    sys.modules[TENSOR_INTRIN] = stand_in = tensor_intrin_stand_in()
    try:
        return importlib.import_module(X86_INTRIN)
    finally:
        if sys.modules.get(TENSOR_INTRIN) is stand_in:
            del sys.modules[TENSOR_INTRIN]


def register_vnni_intrinsic() -> None:
    """Register MetaSchedule's VNNI dot product with the signature of the LLVM that TVM 0.27 ships.

    TVM 0.27's own ``dot_16x4_vnni`` passes ``int32x16`` operands to ``llvm.x86.avx512.vpdpbusd.512``, whose
    operands are ``<64 x i8>`` in LLVM 22: every tensorized schedule then fails LLVM's verifier. Same
    description and instruction, operands reinterpreted as bytes."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    x86 = import_x86_intrinsics()  # registers the description this overrides

    @T.prim_func(s_tir=True)
    def vnni_16x4(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                              dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), a, B.vload([0, 0], dtype="int8x64"), dtype="int32x16",
            )

    TensorIntrin.register(x86.VNNI_DOT_16x4_INTRIN, x86.dot_product_16x4_u8i8i32_desc, vnni_16x4, override=True)


def _value(const) -> np.ndarray:
    return const.value.numpy()


def _quantized(call, floats, scale, zero) -> np.ndarray | None:
    """What ONNX QuantizeLinear makes of constant weights (round half to even, saturate), or None for a form
    this does not know."""
    w, s, z = _value(floats), _value(scale).astype(np.float32), _value(zero)
    if (str(call.attrs.out_dtype) != "int8" or w.ndim != 4 or s.size not in (1, w.shape[0]) or z.size != s.size
            or (s.size > 1 and int(call.attrs.axis) != 0)):
        return None
    shape = (-1, 1, 1, 1) if s.size > 1 else ()
    q = np.rint(w.astype(np.float32) / s.reshape(shape)) + z.astype(np.float32).reshape(shape)
    return np.clip(q, -128, 127).astype(np.int8)


def integer_pointwise(func, products):
    """Rewrite each QDQ 1x1 convolution of ``func`` (uint8 activations, one scale and zero point; int8
    weights with zero points 0, per tensor or per channel) into an int32-accumulating uint8 x int8 product
    (a call of the kernel ``products(rows, channels, outputs)`` returns), corrected for the activation's zero point
    and scaled to float. Returns (function, count)."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    xq, sx, zx = wildcard(), is_const(), is_const()
    stored, sw, zw = is_const(), is_const(), is_const()
    # QAT graphs store float weights and quantize them in the graph (torch's fake-quant export)
    floats, fake_scale, fake_zero = is_const(), is_const(), is_const()
    fake = is_op("relax.quantize")(floats, fake_scale, fake_zero)
    weights_dq = is_op("relax.dequantize")(stored | fake, sw, zw)
    conv = is_op("relax.nn.conv2d")(is_op("relax.dequantize")(xq, sx, zx), weights_dq)
    rewritten = []

    def rewrite(call, found):
        attrs, x = call.attrs, found[xq].ty
        w = _value(found[stored]) if stored in found else _quantized(found[fake], found[floats],
                                                                        found[fake_scale], found[fake_zero])
        if w is None:
            return call
        scales_w = _value(found[sw]).astype(np.float32).reshape(-1)
        if (str(x.dtype) != "uint8" or w.dtype != np.int8 or w.ndim != 4 or w.shape[2:] != (1, 1)
                or int(attrs.groups) != 1 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                or any(int(v) != 1 for v in (*attrs.strides, *attrs.dilation))
                or any(int(v) != 0 for v in attrs.padding) or np.any(_value(found[zw]) != 0)
                or _value(found[sx]).size != 1 or _value(found[zx]).size != 1
                or scales_w.size not in (1, w.shape[0])
                or (scales_w.size > 1 and int(found[weights_dq].attrs.axis) != 0)):
            return call
        c, o = int(x.shape[1]), w.shape[0]
        if c % LANES_IN or o % LANES_OUT:
            return call
        n, h, wd = int(x.shape[0]), int(x.shape[2]), int(x.shape[3])
        weights = w.reshape(o, c)
        packed = weights.reshape(o // LANES_OUT, LANES_OUT, c // LANES_IN, LANES_IN).transpose(0, 2, 1, 3)
        pixels = n * h * wd
        rows = relax.op.reshape(relax.op.permute_dims(found[xq], [0, 2, 3, 1]), [pixels, c])
        acc = relax.call_tir(products(pixels, c, o), relax.Tuple([rows, relax.const(np.ascontiguousarray(packed))]),
                             relax.TensorType((pixels, o), "int32"))
        zero = int(_value(found[zx]).reshape(-1)[0])
        if zero:  # (x - z) . w = x . w - z * sum(w), per output channel
            acc = relax.op.subtract(acc, relax.const((zero * weights.astype(np.int32).sum(1)).astype(np.int32)))
        # a per-channel tensor even when per-tensor: a scalar would be folded into the kernel, and products of
        # the same shapes would be separate tuning tasks instead of one
        scale = np.broadcast_to(_value(found[sx]).astype(np.float32).reshape(-1)[0] * scales_w, (o,)).astype(np.float32)
        y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale))
        rewritten.append(call)
        return relax.op.permute_dims(relax.op.reshape(y, [n, h, wd, o]), [0, 3, 1, 2])

    return rewrite_call(conv, rewrite, func), len(rewritten)


def _product(rows: int, channels: int, outputs: int):
    """uint8 rows (channels innermost) x int8 weights packed in blocks of 16 outputs x 4 channels, the block VNNI's
    dot product reads whole, with int32 sums. The packing is not optional: TVM 0.27 also tensorizes unpacked
    [outputs, channels] weights, and the code it makes then reads the wrong bytes (NOTES.md)."""
    from tvm import te, tirx

    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731  (Relax's shape type)
    x = te.placeholder((i64(rows), i64(channels)), "uint8", name="x")
    w = te.placeholder((i64(outputs // LANES_OUT), i64(channels // LANES_IN), i64(LANES_OUT), i64(LANES_IN)), "int8",
                       name="w")
    k = te.reduce_axis((i64(0), i64(channels)), name="k")
    out = te.compute(
        (i64(rows), i64(outputs)),
        lambda i, j: te.sum(x[i, k].astype("int32")
                            * w[j // LANES_OUT, k // LANES_IN, j % LANES_OUT, k % LANES_IN].astype("int32"), axis=k),
        name="integer_product",
    )
    return te.create_prim_func([x, w, out])


def integer_kernels(mod):
    """``integer_pointwise`` on ``mod``'s main function, with one product kernel per shape. Returns (module,
    count)."""
    from tvm import relax

    builder, kernels = relax.BlockBuilder(mod), {}

    def products(rows: int, channels: int, outputs: int):
        shape = (rows, channels, outputs)
        if shape not in kernels:
            name = "integer_product_{}x{}x{}".format(*shape)
            kernels[shape] = builder.add_func(_product(*shape).with_attr("global_symbol", name), name)
        return kernels[shape]

    func, count = integer_pointwise(mod["main"], products)
    mod = builder.get()
    mod["main"] = func
    return mod, count
