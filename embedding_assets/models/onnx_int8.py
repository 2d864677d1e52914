"""Integer matrix products for an ONNX export with int8 weights stored as `MatMul(x, Cast(W) * scale)`.

onnxruntime folds such weights back to float32 at load, so every product runs in float. Rewritten here,
each one multiplies in integers: every row of `x` (one token's activations) is quantized to 8 bits with a
scale of its own (its largest magnitude over 127), `MatMulIntegerToFloat` multiplies those bytes by the
int8 weights and scales the int32 sums by the weight column's scale in the same pass, then the row's
scale. Products that read the same activations (Q, K and V) share one quantization.

A scale per row, not one per call (onnxruntime's DynamicQuantizeMatMul): a token's outliers cost only
that token's precision, and a text's vector never depends on the texts in the same pass. On MiniLM and
600 chunks of the shipped corpus, cosine distance to the float model p50 0.002 and p95 0.003, against
0.006 and 0.009 with one scale per call (whose migration from MiniLM the golden gate blocked: nDCG@10
0.022 below), at about the same speed.

Rounding to 8 bits amplifies the last bits of anything before it: a sum in another order moves a
vector's elements by up to 0.013 (cosine 0.998 to the old, and as close to the float model as before). So
`ARITHMETIC` names the graph's arithmetic, and the cache key carries it. On an Intel Xeon (AVX-512, AMX,
2 cores), 300 shipped chunks: 97-103 chunks/s with a MatMulInteger, Cast and two Muls per product and the
export's own GELU and attention, 127-133 with the products above and the fusions of `onnx_fusions`;
torch MiniLM 94-97.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedding_assets.models import onnx_fusions

ARITHMETIC = 2  # the revision of the rewrite whose vectors the cache holds; bump when they move
INTEGER_MATMUL = "MatMulIntegerToFloat"  # onnxruntime's: int32 sums scaled to float in one pass
LEVELS = 127.0  # int8's largest magnitude: a row's largest activation maps to it
ZERO_POINT = 128  # the rows are stored as uint8 (x / step + 128), the form MLAS multiplies fastest
AXES_AS_INPUT_OPSET = 18  # ReduceMax takes its axes as an input from this opset on


class NoInt8WeightsError(ValueError):
    """The graph holds no matrix product with int8 weights to run as integers."""


def integer_matmul_model(model_path: Path) -> bytes:
    """The serialized graph of `model_path` with each `MatMul` whose right operand is an int8 initializer
    cast to float and scaled per column (or as a whole) multiplied in integers on the int8 bytes, its left
    operand quantized row by row. The pinned file is only read."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {i.name: i for i in graph.initializer}
    constants = {
        "int8/levels": np.array(LEVELS, np.float32),
        "int8/tiny": np.array(1e-12, np.float32),
        "int8/one": np.array(1.0, np.float32),
        "int8/zero_point": np.array(ZERO_POINT, np.uint8),
        "int8/last_axis": np.array([-1], np.int64),
        "int8/start": np.array([0], np.int64),
    }
    nodes, added, quantized = [], {}, set()
    for node in graph.node:
        weights = _int8_weights(node, producers, initializers)
        if weights is None:
            nodes.append(node)
            continue
        weight_name, scale_name = weights
        if scale_name not in added:
            scale = numpy_helper.to_array(initializers[scale_name]).reshape(-1).astype(np.float32)
            added[scale_name] = f"{scale_name}/flat"
            constants[added[scale_name]] = scale
        depth, width = initializers[weight_name].dims
        for name, value in ((f"int8/rows/{depth}", [-1, depth]), (f"int8/width/{width}", [width])):
            constants[name] = np.array(value, np.int64)
        x = node.input[0]
        if x not in quantized:  # Q, K and V read the same activations: quantized once for all three
            quantized.add(x)
            nodes += _quantized_rows(x, depth, opset)
        nodes += _integer_product(node, weight_name, added[scale_name], width)
    if not added:
        raise NoInt8WeightsError(f"{model_path}: no MatMul reads int8 weights cast to float and scaled")
    outputs = {o.name for o in graph.output}
    del graph.node[:]
    nodes, fusion_constants = onnx_fusions.fused(nodes, initializers, outputs)
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    graph.initializer.extend(fusion_constants)
    model.opset_import.append(helper.make_opsetid(onnx_fusions.CONTRIB_DOMAIN, 1))
    return model.SerializeToString()


def _quantized_rows(x: str, depth: int, opset: int) -> list:
    """Nodes quantizing `x` as rows (n, depth): step = max|row| / 127 (`{x}/int8/step_column`, n by 1),
    QuantizeLinear to uint8 around 128 in one pass (`{x}/int8/bytes`); `{x}/int8/leading`, x's shape
    but its last axis."""
    from onnx import helper

    def at(part: str) -> str:
        return f"{x}/int8/{part}"

    if opset >= AXES_AS_INPUT_OPSET:
        largest = helper.make_node("ReduceMax", [at("abs"), "int8/last_axis"], [at("max")], keepdims=0)
    else:
        largest = helper.make_node("ReduceMax", [at("abs")], [at("max")], keepdims=0, axes=[-1])
    return [
        helper.make_node("Shape", [x], [at("shape")]),
        helper.make_node("Slice", [at("shape"), "int8/start", "int8/last_axis"], [at("leading")]),
        helper.make_node("Reshape", [x, f"int8/rows/{depth}"], [at("rows")]),
        helper.make_node("Abs", [at("rows")], [at("abs")]),
        largest,
        helper.make_node("Max", [at("max"), "int8/tiny"], [at("max_or_tiny")]),
        helper.make_node("Div", [at("max_or_tiny"), "int8/levels"], [at("step")]),
        helper.make_node("Shape", [at("step")], [at("row_count")]),
        helper.make_node("Expand", ["int8/zero_point", at("row_count")], [at("zero_points")]),
        helper.make_node(
            "QuantizeLinear", [at("rows"), at("step"), at("zero_points")], [at("bytes")], axis=0
        ),
        helper.make_node("Unsqueeze", [at("step"), "int8/last_axis"], [at("step_column")]),
    ]


def _integer_product(node, weights: str, column_scales: str, width: int) -> list:
    """Nodes computing `node`'s output x @ W from x's quantized rows: MatMulIntegerToFloat multiplies the
    bytes by W and scales each column's int32 sums in the same pass, then times each row's step, back in
    x's leading shape."""
    from onnx import helper

    x, name = node.input[0], node.name or node.output[0]
    return [
        helper.make_node(
            INTEGER_MATMUL,
            [f"{x}/int8/bytes", weights, "int8/one", column_scales, "int8/zero_point"],
            [f"{name}/int8/column_scaled"],
            domain=onnx_fusions.CONTRIB_DOMAIN,
        ),
        helper.make_node(
            "Mul", [f"{name}/int8/column_scaled", f"{x}/int8/step_column"], [f"{name}/int8/products"]
        ),
        helper.make_node(
            "Concat", [f"{x}/int8/leading", f"int8/width/{width}"], [f"{name}/int8/shape"], axis=0
        ),
        helper.make_node("Reshape", [f"{name}/int8/products", f"{name}/int8/shape"], list(node.output)),
    ]


def _int8_weights(node, producers: dict, initializers: dict) -> tuple[str, str] | None:
    """For `MatMul(x, Mul(Cast(W int8), scale))` with a per-column or single scale: W's and scale's
    initializer names; otherwise None."""
    from onnx import TensorProto

    if node.op_type != "MatMul":
        return None
    scaled = producers.get(node.input[1])
    if scaled is None or scaled.op_type != "Mul":
        return None
    cast, scale = producers.get(scaled.input[0]), initializers.get(scaled.input[1])
    if cast is None or cast.op_type != "Cast" or scale is None:
        return None
    weights = initializers.get(cast.input[0])
    if weights is None or weights.data_type != TensorProto.INT8 or len(weights.dims) != 2:
        return None
    columns = weights.dims[1]
    if int(np.prod(scale.dims, dtype=np.int64)) not in (1, columns) or list(scale.dims[:-1]) not in ([], [1]):
        return None
    return weights.name, scale.name
