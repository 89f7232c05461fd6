"""Smaller, faster copies of an exported classifier for the CPU: int8 ONNX and bf16 TorchScript.

int8 is onnxruntime's static quantization as its documentation recommends for CNNs: the model first
goes through ``quant_pre_process`` (shape inference and graph optimisation), then ``quantize_static``
in QDQ format with per-channel int8 weights and uint8 activations whose ranges come from calibration
images run through the model's own preprocessing. The nodes after the last linear layer (the
temperature and the softmax or sigmoid) stay float, so probabilities keep their resolution and
multi-label thresholds mean what they meant.

bf16 is the network's weights and arithmetic in bfloat16 (oneDNN's AVX512-BF16/AMX kernels), with the
input and output in float32. On a CPU without those instructions bf16 is emulated and slower than
fp32, so it is refused there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vggtune.core.errors import UserError

QUANTIZE = ("none", "int8", "bf16")
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# x86 instructions that run int8 dot products without VPMADDUBSW's saturation (onnxruntime's docs: without
# them, quantize weights with reduce_range, 7 bits, or accuracy can suffer).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``); empty where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name, as ``lscpu`` shows it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX)."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI or AMX)."""
    return any(f in cpu_flags() for f in VNNI_FLAGS)


def cpu_record() -> dict:
    """What every measurement is recorded with: the processor and the flags that decide int8 and bf16 speed."""
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", *VNNI_FLAGS, *BF16_FLAGS)
    return {"cpu": cpu_name(), "flags": [f for f in wanted if f in flags], "threads": torch.get_num_threads()}


def check_quantize(value: str, fmt: str) -> str:
    """``value`` if it is a quantization this ``fmt`` and this CPU can take, else a UserError saying what works."""
    value = str(value)
    if value not in QUANTIZE:
        raise UserError(f"quantize must be one of {', '.join(QUANTIZE)}, got {value!r}")
    if value == "int8" and fmt != "onnx":
        raise UserError("quantize=int8 writes an ONNX file (onnxruntime's static quantization): pass format=onnx")
    if value == "bf16":
        if fmt != "torchscript":
            raise UserError(
                "quantize=bf16 is for format=torchscript (onnxruntime's CPU provider has no bf16 "
                "convolutions); for a faster ONNX file use quantize=int8"
            )
        if not has_bf16():
            raise UserError(
                f"quantize=bf16 needs a CPU with bf16 instructions ({' or '.join(BF16_FLAGS)}), and "
                f"this one ({cpu_name()}) has none: bf16 would be emulated, slower than fp32; use "
                "format=onnx quantize=int8"
            )
    return value


def check_method(method: str) -> str:
    """``method`` if it names an onnxruntime calibration method."""
    if str(method) not in CALIBRATION_METHODS:
        raise UserError(f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    return str(method)


def float_tail(model_path: Path) -> list[str]:
    """The nodes after the graph's last Gemm/MatMul (the temperature and the softmax or sigmoid): left in float."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    last = max((i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")), default=len(nodes) - 1)
    return [n.name for n in nodes[last + 1 :]]


def quantize_int8(
    fp32: Path, out: Path, batches: Iterable[np.ndarray], method: str = "minmax", input_name: str = "image"
) -> dict:
    """Write the int8 version of the fp32 ONNX file ``fp32`` to ``out``, calibrated on ``batches`` (float32
    NCHW arrays in [0, 1]). Returns the settings used, for the export's JSON."""
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, arrays: Iterator[np.ndarray]):
            self.arrays, self.images = arrays, 0

        def get_next(self):
            x = next(self.arrays, None)
            if x is None:
                return None
            self.images += len(x)
            return {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    pre, tmp = out.with_name(f".{out.name}.pre.onnx"), out.with_name(f".{out.name}.tmp")
    reduce_range = not has_vnni()
    reader = Reader(iter(batches))
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        excluded = float_tail(pre)
        with _quiet_quantizer():
            quantize_static(
                str(pre),
                str(tmp),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
            )
        os.replace(tmp, out)
    finally:
        for path in (pre, tmp, pre.with_name(pre.name + ".data")):
            path.unlink(missing_ok=True)
    return {
        "runtime": f"onnxruntime {ort_version}",
        "format": "QDQ",
        "weights": "int8, per channel",
        "activations": "uint8, per tensor",
        "reduce_range": reduce_range,
        "calibration_method": method,
        "float_nodes": excluded,
        "calibration_images": reader.images,
    }


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs a WARNING through the root logger for every rank-1 weight it cannot quantize
    per channel (BatchNorm scales) and for each tensor without a range: many lines, none a user can act on."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
