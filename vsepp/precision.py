"""Running an exported encoder in bfloat16 on CPU: its matrix products in bfloat16.

The export is a float32 SavedModel and the library may not rebuild its Keras model (that is
training's code), so the traced graph itself is rewritten, as TensorFlow's own
auto-mixed-precision pass would: in the functions of the traced graph's library, every
convolution and matrix product (nearly all of the FLOPs) gets its inputs cast to bfloat16
and its output cast back to float32, and the graph is imported again with the SavedModel's
own variables. It is not frozen into constants first: a frozen `encode_bytes` decoded 3.6x
slower (its decode loop) and held 2.6x-4x the memory (benchmarks/README.md, issue 23).
Decoding, resizing, normalisation layers, activations
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
    """`concrete` (a float32 ConcreteFunction with one input, its captured variables and one
    output) with its matrix ops in bfloat16; called like it."""
    import tensorflow as tf

    graph = concrete.graph.as_graph_def()
    # The rewritten functions get new names: the originals stay registered with TensorFlow.
    names = {f.signature.name for f in graph.library.function}
    rewritten = 0
    for function in graph.library.function:
        rewritten += _bfloat16_matrix_ops(function)
        function.signature.name += _RENAMED
        for node in function.node_def:
            _rename_calls(node.attr, names)
    for node in graph.node:
        _rename_calls(node.attr, names)
    del graph.library.gradient[:]
    if not rewritten:
        raise ValueError("the encoder has no convolution or matrix product to run in bfloat16")
    log.info("bfloat16: %d matrix ops rewritten", rewritten)
    feed, (fetch,) = concrete.inputs[0], concrete.outputs
    captured = [t.name for t in concrete.graph.internal_captures]
    variables = list(concrete.captured_inputs)

    def imported(x: Any) -> Any:
        here = tf.compat.v1.get_default_graph()
        inputs = {name: here.capture(v) for name, v in zip(captured, variables, strict=True)}
        (out,) = tf.graph_util.import_graph_def(
            graph, input_map={feed.name: x, **inputs}, return_elements=[fetch.name], name=""
        )
        return out

    return tf.compat.v1.wrap_function(imported, signature=[tf.TensorSpec.from_tensor(feed)])


_RENAMED = "_vsepp_bfloat16"
# The output argument of each matrix op, as a function body names it ("node:arg:index").
_OUTPUT_ARG = {"MatMul": "product"}  # the others': "output"


def _rename_calls(attrs: Any, names: set[str]) -> None:
    """Point a node's function attributes (a call, a loop's body, a branch) at the renamed
    functions."""
    for value in attrs.values():
        if value.HasField("func") and value.func.name in names:
            value.func.name += _RENAMED
        if value.HasField("list"):
            for function in value.list.func:
                if function.name in names:
                    function.name += _RENAMED


def _bfloat16_matrix_ops(function: Any) -> int:
    """Rewrite a FunctionDef's float32 matrix ops in place: inputs cast to bfloat16, the op in
    bfloat16, its result cast back under the op's name. Returns how many were rewritten."""
    from tensorflow.core.framework import types_pb2

    nodes = list(function.node_def)
    del function.node_def[:]
    moved: dict[str, str] = {}  # "op:output:" -> "op:y:" (the Cast now holds the name)
    for node in nodes:
        if node.op not in MATRIX_OPS or node.attr["T"].type != types_pb2.DT_FLOAT:
            function.node_def.add().CopyFrom(node)
            continue
        inner = function.node_def.add()
        inner.CopyFrom(node)
        inner.name = f"{node.name}/bfloat16"
        for key in ("T", "Ta", "Tb", "Tout"):
            if key in inner.attr:
                inner.attr[key].type = types_pb2.DT_BFLOAT16
        del inner.input[:]
        for j, source in enumerate(i for i in node.input if not i.startswith("^")):
            cast = function.node_def.add()
            cast.op, cast.name = "Cast", f"{node.name}/bfloat16_in{j}"
            cast.input.append(source)
            cast.attr["SrcT"].type = types_pb2.DT_FLOAT
            cast.attr["DstT"].type = types_pb2.DT_BFLOAT16
            inner.input.append(f"{cast.name}:y:0")
        inner.input.extend(i for i in node.input if i.startswith("^"))
        output = _OUTPUT_ARG.get(node.op, "output")
        back = function.node_def.add()
        back.op, back.name = "Cast", node.name
        back.input.append(f"{inner.name}:{output}:0")
        back.attr["SrcT"].type = types_pb2.DT_BFLOAT16
        back.attr["DstT"].type = types_pb2.DT_FLOAT
        moved[f"{node.name}:{output}:"] = f"{node.name}:y:"
    if moved:

        def fixed(ref: str) -> str:
            for old, new in moved.items():
                if ref.startswith(old):
                    return new + ref[len(old) :]
            return ref

        for node in function.node_def:
            refs = [fixed(i) for i in node.input]
            del node.input[:]
            node.input.extend(refs)
        for key in list(function.ret):
            function.ret[key] = fixed(function.ret[key])
    return len(moved)
