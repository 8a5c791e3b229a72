"""Which ops of the int8 graph the Coral Edge TPU can map, from Coral's documented op table.

edgetpu_compiler is not installable here (its apt repository is outside Debian), so this reads the
graph's ops and checks them against the table in Coral's "TensorFlow models on the Edge TPU"
(supported operations, compiler 16). The compiler maps ops only up to the first unsupported one in
execution order; everything after it runs on the CPU. Run ``edgetpu_compiler -s`` on the int8
model for the authoritative mapping.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

# Coral's table of supported operations (names as in the TFLite schema).
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH",
    "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE",
    "TRANSPOSE_CONV",
})


def graph_ops(path: str | Path) -> list[str]:
    """Op names of the model in execution order."""
    from edge.runtime.litert import interpreter_class
    it = interpreter_class()(model_path=str(path))
    return [d["op_name"] for d in it._get_ops_details()]


def edgetpu_report(path: str | Path) -> dict:
    ops = graph_ops(path)
    counts = Counter(ops)
    unsupported = sorted(k for k in counts if k not in EDGETPU_OPS)
    first = next((i for i, o in enumerate(ops) if o not in EDGETPU_OPS), None)
    return {
        "source": "Coral's documented op table (not edgetpu_compiler, which is not installable here)",
        "ops": dict(sorted(counts.items())),
        "n_ops": len(ops),
        "unsupported_op_types": unsupported,
        "mappable_prefix_ops": len(ops) if first is None else first,
        "mappable_fraction_by_table": sum(c for k, c in counts.items() if k in EDGETPU_OPS) / max(len(ops), 1),
        "note": "the BiLSTM is unrolled into FULLY_CONNECTED/LOGISTIC/TANH/MUL/ADD (no LSTM op); the compiler maps "
                "ops only up to the first unsupported op in execution order; unsupported ones run on the CPU",
    }
