"""Timing of a deployable format on this machine: latency at batch 1, throughput at batch 16, and the share of
the CPU's peak it reaches, from a short matmul probe in the same process.

Every timing runs the model alone on images decoded beforehand, so formats differ only in the model's
own work. The peak is what a large matrix product reaches here (fp32 and bf16 in PyTorch, int8 in
onnxruntime's ``MatMulInteger``, the kernels VGG's convolutions and linear layers end up in); a format's
share is its arithmetic per image (``torch.utils.flop_counter``) times its images per second over the
peak of its precision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

Run = Callable[[torch.Tensor], torch.Tensor]
RESULT_SUFFIX = ".benchmark.json"  # beside the checkpoint: what `vggtune serve backend=auto` reads
PROBE_SIZE = 1024  # channels of the probe: 2.1 G operations a run, large enough for the kernels' peak


def benchmark_file(ckpt: Path) -> Path:
    """Where ``vggtune benchmark`` records its result for ``ckpt``: ``<ckpt>.benchmark.json`` beside it."""
    return ckpt.with_name(ckpt.name + RESULT_SUFFIX)


def flops_per_image(net: nn.Module, image_size: int) -> int:
    """Floating-point operations (2 per multiply-add) of one image through ``net``, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(net.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, image_size, image_size, dtype=param.dtype))
    return int(counter.get_total_flops())


def latency_ms(run: Run, image: torch.Tensor, repeats: int = 30, seconds: float = 10.0) -> dict:
    """p50 and p99 of one image's time (ms) over up to ``repeats`` runs or ``seconds``, after two warm-up runs."""
    for _ in range(2):
        run(image)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < repeats and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        run(image)
        times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)), "runs": len(times)}


def throughput(run: Run, batch: torch.Tensor, repeats: int = 3) -> dict:
    """Images per second at ``len(batch)``, over ``repeats`` batches after one warm-up batch."""
    run(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    seconds = time.perf_counter() - start
    return {"images_per_s": repeats * len(batch) / seconds, "batch": len(batch), "batches": repeats}


def _best_rate(step: Callable[[], object], ops: float, seconds: float) -> float:
    """The best of several ~0.2 s windows of ``step`` (``ops`` operations each), in G operations per second,
    after 0.3 s of warm-up (thread pools spin up, kernels are chosen, clocks rise)."""
    warm = time.perf_counter() + 0.3
    while time.perf_counter() < warm:
        step()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start, n = time.perf_counter(), 0
        while n < 2 or time.perf_counter() - start < 0.2:
            step()
            n += 1
        best = max(best, n * ops / (time.perf_counter() - start) / 1e9)
    return best


def peak(bf16: bool, seconds: float = 1.5, threads: int | None = None) -> dict:
    """This CPU's measured peak: a {precision: G operations per second} table, and the arithmetic behind each.

    fp32 and bf16 are a 1x1 convolution (a matrix product through oneDNN, the library VGG's convolutions run
    in: MKL's ``torch.mm`` reaches half of it on AMD processors); int8 is onnxruntime's int8 GEMM."""
    n, side = PROBE_SIZE, 32
    ops = 2.0 * n * n * side * side  # (n x n weights) x (n channels x side^2 pixels)
    x, w = torch.rand(1, n, side, side), torch.rand(n, n, 1, 1)
    rates = {"fp32": _best_rate(lambda: torch.conv2d(x, w), ops, seconds)}
    if bf16:
        x16, w16 = x.bfloat16(), w.bfloat16()
        rates["bf16"] = _best_rate(lambda: torch.conv2d(x16, w16), ops, seconds)
    int8 = _int8_matmul(n, side * side, threads or torch.get_num_threads())
    if int8 is not None:
        rates["int8"] = _best_rate(int8, ops, seconds)
    shape = f"{n} x {n} weights on {n} channels x {side}x{side} pixels = 2 x {n}^2 x {side * side}"
    how = {
        k: f"{shape} = {ops / 1e9:.2f} G operations a run; best of 0.2 s windows: {v:.0f} G operations/s"
        for k, v in rates.items()
    }
    return {
        "gops": rates,
        "how": how,
        "kernels": {
            "fp32": "torch.conv2d 1x1 float32 (oneDNN)",
            "bf16": "torch.conv2d 1x1 bfloat16 (oneDNN)",
            "int8": "onnxruntime MatMulInteger uint8 x int8 (constant weights)",
        },
    }


def _int8_matmul(n: int, m: int, threads: int) -> Callable[[], object] | None:
    """onnxruntime's int8 GEMM on a uint8 activation and a constant int8 weight, as a quantized layer runs it."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.integers(0, 255, (m, n), dtype=np.uint8)
    return lambda: session.run(None, {"A": x})
