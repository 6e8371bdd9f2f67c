"""Running an exported encoder in bfloat16 on CPU: its matrix products in bfloat16.

The export is a float32 SavedModel and the library may not rebuild its Keras model (that is
training's code), so the traced graph itself is rewritten, as TensorFlow's own
auto-mixed-precision pass would: the weights are frozen into constants, and every
convolution and matrix product (nearly all of the FLOPs) gets its inputs cast to bfloat16
and its output cast back to float32. Decoding, resizing, normalisation layers, activations
and the final L2 normalisation stay in float32, so the vectors come out float32 and of unit
length. TensorFlow's pass (`auto_mixed_precision_onednn_bfloat16`) is not used because
Grappler does not schedule it on a CPU without AVX512 (it silently leaves the graph in
float32 there), while bfloat16 kernels exist on every x86 CPU: native with AVX512_BF16 or
AMX, emulated in float32 units otherwise (slower than float32; benchmarks/README.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
# What a user may ask for: a precision, or "auto" (`resolve_precision`).
CHOICES = ("auto", *PRECISIONS)
# The ops whose inputs go to bfloat16: convolutions and matrix products.
MATRIX_OPS = frozenset(
    {"Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"}
)
# CPU flags of native bfloat16 arithmetic (/proc/cpuinfo).
NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    """This CPU's flags (/proc/cpuinfo), empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def native_bfloat16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU (or one with `flags`) computes bfloat16 natively (else it is
    emulated, and slower)."""
    have = cpu_flags() if flags is None else frozenset(flags)
    return any(flag in have for flag in NATIVE_FLAGS)


def check_precision(precision: str) -> None:
    """Refuse a precision that is not one of CHOICES."""
    if precision not in CHOICES:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(CHOICES)}")


def resolve_precision(precision: str, flags: Iterable[str] | None = None) -> str:
    """The precision to run: `precision` itself, or for "auto" bfloat16 where the CPU (or
    one with `flags`) has AVX512_BF16 or AMX and float32 elsewhere, logged with the reason.

    bfloat16 is worth choosing alone only where it is native: there it is faster, and on the
    demo model's 1K test split it moved R@1/5/10 by at most 0.1 point against float32, on two
    seeds (benchmarks/README.md); emulated, it is slower than float32.
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    if native_bfloat16(flags):
        log.info("precision auto: bfloat16 (this CPU has %s)", " or ".join(NATIVE_FLAGS))
        return "bfloat16"
    log.info("precision auto: float32 (no %s here: bfloat16 would be emulated, and slower)",
             " or ".join(NATIVE_FLAGS))  # fmt: skip
    return "float32"


def bfloat16_function(concrete: Any) -> Callable[..., Any]:
    """`concrete` (a float32 ConcreteFunction with one input and one output) with its
    matrix ops in bfloat16; called like it."""
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2, types_pb2
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(concrete)
    graph = frozen.graph.as_graph_def()
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph)
    del out.node[:]
    rewritten = 0
    for node in graph.node:
        if node.op not in MATRIX_OPS or node.attr["T"].type != types_pb2.DT_FLOAT:
            out.node.add().CopyFrom(node)
            continue
        rewritten += 1
        inner = out.node.add()
        inner.CopyFrom(node)
        inner.name = f"{node.name}/bfloat16"
        for key in ("T", "Ta", "Tb", "Tout"):
            if key in inner.attr:
                inner.attr[key].type = types_pb2.DT_BFLOAT16
        del inner.input[:]
        for j, source in enumerate(i for i in node.input if not i.startswith("^")):
            cast = out.node.add()
            cast.op, cast.name, cast.device = "Cast", f"{node.name}/bfloat16_in{j}", node.device
            cast.input.append(source)
            cast.attr["SrcT"].type = types_pb2.DT_FLOAT
            cast.attr["DstT"].type = types_pb2.DT_BFLOAT16
            inner.input.append(cast.name)
        inner.input.extend(i for i in node.input if i.startswith("^"))
        # The float32 result keeps the op's name, so its consumers need no change.
        back = out.node.add()
        back.op, back.name, back.device = "Cast", node.name, node.device
        back.input.append(inner.name)
        back.attr["SrcT"].type = types_pb2.DT_BFLOAT16
        back.attr["DstT"].type = types_pb2.DT_FLOAT
    if not rewritten:
        raise ValueError("the encoder has no convolution or matrix product to run in bfloat16")
    log.info("bfloat16: %d matrix ops of %d nodes rewritten", rewritten, len(graph.node))
    (feed,), (fetch,) = frozen.inputs, frozen.outputs
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(out, name=""), signature=[]
    )
    return wrapped.prune(
        feeds=wrapped.graph.get_tensor_by_name(feed.name),
        fetches=wrapped.graph.get_tensor_by_name(fetch.name),
    )
