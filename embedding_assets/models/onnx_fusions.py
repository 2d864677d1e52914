"""Rewrites of an exported BERT-style encoder graph into onnxruntime's fused operators, where its own
optimizer does not match the export's pattern. Each keeps the arithmetic of the part it replaces (the
same formula, other rounding) and leaves a graph it does not recognize as it was.

On MiniLM int8 and 300 shipped chunks, per pass: GELU five elementwise passes over the largest
activations (n x 1536) become one; attention (per head: transposes, two scaled products, the mask's add,
softmax, the value product, a transpose back) becomes one `MultiHeadAttention` that also adds Q's, K's
and V's biases.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

CONTRIB_DOMAIN = "com.microsoft"  # onnxruntime's own operators
PADDING_MASK = "attention_mask"  # the graph input naming each text's real tokens (1) and padding (0)
ATTENTION_PASSTHROUGH = ("Mul", "Transpose", "Reshape")  # between a projection's bias and the scores


def fused(nodes: list, initializers: dict, outputs: set[str]) -> tuple[list, list]:
    """`nodes` with the exported GELUs and attentions fused, and the initializers the fused nodes add."""
    nodes = _fused_gelu(read_nodes(_without_nan_guards(nodes, outputs), outputs), initializers)
    nodes, added = _fused_attention(nodes, initializers)
    return read_nodes(nodes, outputs), added


def read_nodes(nodes: list, outputs: set[str]) -> list:
    """`nodes` without those whose every output nobody reads (the float casts of replaced weights)."""
    while True:
        read = outputs | {name for node in nodes for name in node.input}
        kept = [node for node in nodes if any(output in read for output in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def _without_nan_guards(nodes: list, outputs: set[str]) -> list:
    """`nodes` with every `Where(IsNaN(p), zero, p)` removed and its readers reading `p` itself (the
    IsNaN, read by no one then, goes with the unread nodes). Kept where its output is the graph's.

    The export guards each attention softmax against a row whose every key is masked. No row here is:
    every text keeps its [CLS] and [SEP] tokens unmasked, and the vectors stay the same to the bit."""
    producers = {output: node for node in nodes for output in node.output}
    bypassed: dict[str, str] = {}
    for node in nodes:
        condition = producers.get(node.input[0]) if node.op_type == "Where" else None
        guarded = (
            condition is not None and condition.op_type == "IsNaN" and condition.input[0] == node.input[2]
        )
        if guarded and node.output[0] not in outputs:
            bypassed[node.output[0]] = node.input[2]
    kept = [node for node in nodes if not (node.op_type == "Where" and node.output[0] in bypassed)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in bypassed:
                node.input[i] = bypassed[name]
    return kept


def _fused_gelu(nodes: list, initializers: dict) -> list:
    """`nodes` with each exported GELU, `x * (0.5 * (1 + Erf(x / sqrt(2))))`, as one `Gelu` (which
    onnxruntime then fuses with the bias add before it)."""
    from onnx import helper

    producers, readers = _producers(nodes), _readers(nodes)

    def only_reader(node, op_type: str):
        found = readers.get(node.output[0], [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    replaced, dropped = {}, set()
    for erf in (node for node in nodes if node.op_type == "Erf"):
        divide = producers.get(erf.input[0])
        plus_one = only_reader(erf, "Add")
        half = plus_one and only_reader(plus_one, "Mul")
        times_x = half and only_reader(half, "Mul")
        if divide is None or divide.op_type != "Div" or times_x is None:
            continue
        x = divide.input[0]
        if not (
            _is_constant(initializers, divide.input[1], np.sqrt(2.0))
            and len(readers[divide.output[0]]) == 1
            and _is_constant(initializers, _other(plus_one, erf.output[0]), 1.0)
            and _is_constant(initializers, _other(half, plus_one.output[0]), 0.5)
            and set(times_x.input) == {x, half.output[0]}
        ):
            continue
        dropped.update(id(n) for n in (divide, erf, plus_one, half))
        replaced[id(times_x)] = helper.make_node(
            "Gelu", [x], list(times_x.output), name=f"{x}/gelu", domain=CONTRIB_DOMAIN
        )
    return [replaced.get(id(node), node) for node in nodes if id(node) not in dropped]


def _fused_attention(nodes: list, initializers: dict) -> tuple[list, list]:
    """`nodes` with each `Softmax(Q' @ K'^T + mask) @ V'` (Q', K', V': a projection plus its bias,
    split into heads, Q' and K' each scaled by head_size^-1/4) and its merge of the heads back as one
    `MultiHeadAttention` on the projections, their biases and the texts' padding mask.

    An encoder's attention: every token sees every real token of its text. The mask the export adds
    must come from the `attention_mask` input, and the scale must be the one MultiHeadAttention uses."""
    from onnx import TensorProto, helper, numpy_helper

    producers, readers = _producers(nodes), _readers(nodes)
    mask = f"{PADDING_MASK}/int32"
    replaced, added = {}, []
    for softmax in (node for node in nodes if node.op_type == "Softmax"):
        found = _attention(softmax, producers, readers, initializers)
        if found is None:
            continue
        (query, key, value), biases, merged, head_size = found
        hidden = len(biases[0])
        bias = numpy_helper.from_array(np.concatenate(biases), f"{softmax.name or merged}/qkv_bias")
        added.append(bias)
        replaced[id(producers[merged])] = helper.make_node(
            "MultiHeadAttention",
            [query, key, value, bias.name, mask],
            [merged],
            name=f"{merged}/attention",
            domain=CONTRIB_DOMAIN,
            num_heads=hidden // head_size,
        )
    if not replaced:
        return nodes, []
    cast = helper.make_node("Cast", [PADDING_MASK], [mask], to=TensorProto.INT32, name=mask)
    return [cast, *(replaced.get(id(node), node) for node in nodes)], added


def _attention(softmax, producers: dict, readers: dict, initializers: dict):
    """((Q, K, V projections), their biases, the merged heads' tensor, head size) of the attention
    around `softmax`, or None where the graph is not that pattern."""
    scores = producers.get(softmax.input[0])
    products = scores is not None and scores.op_type == "Add" and producers.get(scores.input[0])
    after = readers.get(softmax.output[0], [])
    if not products or products.op_type != "MatMul" or len(after) != 1 or after[0].op_type != "MatMul":
        return None
    if PADDING_MASK not in _ancestors(scores.input[1], producers):
        return None
    heads = readers.get(after[0].output[0], [])
    merge = heads and readers.get(heads[0].output[0], [])
    if len(heads) != 1 or heads[0].op_type != "Transpose" or len(merge) != 1 or merge[0].op_type != "Reshape":
        return None
    sides = [_projection(name, producers, initializers) for name in (*products.input, after[0].input[1])]
    if any(side is None for side in sides):
        return None
    (query, query_scale), (key, key_scale), (value, value_scale) = sides
    if value_scale != 1.0 or not np.isclose(key_scale, query_scale):
        return None
    head_size = round(query_scale**-4)
    if not np.isclose(query_scale, head_size**-0.25):
        return None
    biases = [_array(initializers[bias]) for _, bias in (query, key, value)]
    if len({len(b) for b in biases}) != 1 or len(biases[0]) % head_size:
        return None
    return tuple(projection for projection, _ in (query, key, value)), biases, merge[0].output[0], head_size


def _projection(name: str, producers: dict, initializers: dict):
    """((projection, bias name), scale) of a head-split operand: up through transposes, reshapes and
    constant scalings to `Add(projection, 1-D bias)`; None if something else is on the way."""
    scale = 1.0
    while (node := producers.get(name)) is not None:
        if node.op_type == "Add" and _vector(initializers.get(node.input[1])):
            return (node.input[0], node.input[1]), scale
        if node.op_type not in ATTENTION_PASSTHROUGH:
            return None
        if node.op_type == "Mul":
            factor = initializers.get(node.input[1])
            if factor is None or np.size(_array(factor)) != 1:
                return None
            scale *= float(_array(factor).reshape(-1)[0])
        name = node.input[0]
    return None


def _array(tensor) -> np.ndarray:
    """An initializer's values."""
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def _vector(tensor) -> bool:
    return tensor is not None and len(tensor.dims) == 1


def _ancestors(name: str, producers: dict) -> set[str]:
    """Every tensor `name` is computed from (graph inputs and initializers included)."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in producers:
            todo.extend(producers[current].input)
    return seen


def _is_constant(initializers: dict, name: str, value: float) -> bool:
    found = initializers.get(name)
    return found is not None and np.allclose(_array(found), value)


def _other(node, name: str) -> str:
    """The input of a two-input `node` that is not `name`."""
    return next((i for i in node.input if i != name), "")


def _producers(nodes: list) -> dict:
    return {output: node for node in nodes for output in node.output}


def _readers(nodes: list) -> dict[str, list]:
    readers: dict[str, list] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    return readers
