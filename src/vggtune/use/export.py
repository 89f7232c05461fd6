"""A trained classifier as a self-contained ONNX or TorchScript file, checked against PyTorch after writing.

The exported network takes what any image library produces after resizing and cropping
(float RGB in [0, 1], NCHW) and normalises it itself, so a user of the file cannot get the
mean/std step wrong; the JSON written beside it says so, with the sizes and the class names.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open
from vggtune.model.arch import Preprocessing

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME = "image"
_CHECK_BATCH = 3  # differs from the batch of 2 the export traces with, so the check proves the batch is dynamic


class ExportedClassifier(nn.Module):
    """``net`` with normalisation in front and (unless ``logits``) ``softmax(logits / temperature)`` after it.

    ``dtype=torch.bfloat16`` runs the network in bfloat16 (its weights converted); the input, the
    normalisation, the output and the softmax stay float32.
    """

    pixel_mean: torch.Tensor  # buffers (register_buffer): declared for the type checker
    pixel_std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        prep: Preprocessing,
        logits: bool = False,
        temperature: float = 1.0,
        multilabel: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.net = net.to(dtype)
        self.dtype = dtype
        self.logits = logits
        self.multilabel = multilabel  # a sigmoid per label instead of the softmax
        self.temperature = float(temperature)  # a constant in the graph; 1.0 leaves the softmax as it was
        self.register_buffer("pixel_mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities (or logits) for a float RGB batch in [0, 1] of shape (N, 3, size, size)."""
        x = (image - self.pixel_mean) / self.pixel_std
        out = self.net(x) if self.dtype == torch.float32 else self.net(x.to(self.dtype)).float()
        if self.logits:
            return out
        if self.multilabel:
            return out.sigmoid()
        return (out / self.temperature).softmax(dim=1) if self.temperature != 1.0 else out.softmax(dim=1)


def check_format(fmt: str) -> str:
    """``fmt`` if it is a known format and its libraries are installed, else a UserError saying what to do."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401 - only checking that the optional extra is installed
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise UserError(
                f"format=onnx needs {e.name or 'onnx'}, which is not installed: "
                "pip install 'vggtune[export]' (onnx, onnxruntime, onnxscript), "
                "or use format=torchscript"
            ) from None
    return fmt


def example_batch(prep: Preprocessing, batch: int, seed: int = 0) -> torch.Tensor:
    """Uniform random images in [0, 1] of the model's input size (the same ones for every call with ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, prep.image_size, prep.image_size, generator=generator)


def write(model: ExportedClassifier, prep: Preprocessing, fmt: str, path: Path) -> dict:
    """Write ``model`` to ``path`` in ``fmt``, then run the file on random images and compare with ``model``.

    Returns the check: the runtime, the batch size, the max absolute difference and the tolerance
    (1e-4 of the largest output, at least 1e-4). A UserError if the file disagrees with PyTorch.
    """
    save, run, runtime = _FORMATS[fmt]
    save(model, example_batch(prep, 2), path)
    x = example_batch(prep, _CHECK_BATCH, seed=1)
    got = run(path, x)
    with torch.inference_mode():
        expected = model(x)
    diff = float((got - expected).abs().max())
    tolerance = 1e-4 * max(1.0, float(expected.abs().max()))
    if not diff <= tolerance:
        raise UserError(
            f"the exported {path} disagrees with the PyTorch model by up to {diff:.3g} (tolerance "
            f"{tolerance:.1g}) on the same input: do not use it (it is kept for inspection); "
            "please report this with your torch and onnxruntime versions"
        )
    return {"runtime": runtime(), "batch": _CHECK_BATCH, "max_abs_diff": diff, "tolerance": tolerance}


def _save_onnx(model: ExportedClassifier, example: torch.Tensor, path: Path) -> None:
    """One ONNX file with a dynamic batch dimension, from torch.onnx's dynamo exporter."""
    for name in ("onnxscript", "onnx_ir"):  # their optimiser passes log each step at INFO, which Hydra prints
        logging.getLogger(name).setLevel(logging.WARNING)
    output = "logits" if model.logits else "probabilities"
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[output],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        dynamo=True,
        verbose=False,
    )
    assert program is not None  # dynamo=True returns the program
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # One file: every VGG is well under protobuf's 2 GB limit, and one file is easier to hand on.
        program.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_session_runner(path: Path, threads: int | None = None):
    """A function running the ONNX file on a float batch (a tensor) with onnxruntime on the CPU -> a tensor."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    return onnx_session_runner(path)(x)


def _onnx_runtime() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def _save_torchscript(model: ExportedClassifier, example: torch.Tensor, path: Path) -> None:
    """Traced, not scripted: VGG's forward has no data-dependent control flow that tracing would lose."""
    with quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace(model, example)
        with atomic_open(path, "wb") as f:
            torch.jit.save(traced, f)


def torchscript_runner(path: Path):
    """A function running the TorchScript file on a float batch -> a tensor (without autograd)."""
    with quiet_torchscript():
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with quiet_torchscript(), torch.inference_mode():
            return module(x)

    return run


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    return torchscript_runner(path)(x)


def _torch_runtime() -> str:
    return f"torch.jit.load, torch {torch.__version__}"


_FORMATS = {
    "onnx": (_save_onnx, _run_onnx, _onnx_runtime),
    "torchscript": (_save_torchscript, _run_torchscript, _torch_runtime),
}


@contextmanager
def quiet_torchscript():
    # Recent torch warns that torch.jit is deprecated on every trace/save/load; the user asked for
    # TorchScript, and the task says once that ONNX is the format to prefer.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated")
        yield


def describe(
    path: Path,
    fmt: str,
    model: ExportedClassifier,
    prep: Preprocessing,
    class_names: list[str],
    arch: str,
    checkpoint: Path,
    thresholds: list[float] | None = None,
    stored_temperature: float | None = None,
) -> dict:
    """The JSON written beside an exported file: what goes in, what comes out, and where it came from.

    Multi-label (``thresholds`` given): ``multilabel`` is true, the output is a sigmoid probability per
    label, and ``thresholds`` maps each label to the cut at or above which it is predicted.
    """
    size = prep.image_size
    extra = {}
    if thresholds is not None:
        extra = {
            "multilabel": True,
            "thresholds": dict(zip(class_names, thresholds)),
            "how": "each label is predicted when its probability (sigmoid of its logit) is at or above its threshold",
        }
    return {
        "file": path.name,
        "format": fmt,
        "class_names": class_names,
        "output": "logits" if model.logits else "probabilities",
        "input_name": INPUT_NAME,
        "input_shape": ["batch", 3, size, size],
        "input": (
            f"float32 RGB in [0, 1], NCHW: resize the shorter side to {prep.resize_size} px (bilinear, "
            f"antialiased), centre-crop {size}x{size}, divide by 255. Do not normalise: the model "
            "subtracts mean and divides by std itself."
        ),
        "image_size": size,
        "resize_size": prep.resize_size,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "normalized_inside": True,
        "calibration": _describe_calibration(model, stored_temperature),
        "arch": arch,
        "checkpoint": str(checkpoint.resolve()),
        **extra,
    }


def _describe_calibration(model: ExportedClassifier, stored: float | None) -> dict:
    """``stored``: the checkpoint's temperature (None: it has none), recorded even where it is not applied."""
    if model.multilabel:
        return {
            "temperature": 1.0,
            "applied": False,
            "how": "several labels per image: sigmoid probabilities, not temperature-scaled",
        }
    t = model.temperature
    if t == 1.0 and stored is not None and not model.logits:  # calibrate=false
        return {
            "temperature": stored,
            "applied": False,
            "how": f"calibrate=false: the probabilities are softmax(logits); the checkpoint's temperature "
            f"{stored:.6g} would calibrate them as softmax(logits / {stored:.6g})",
        }
    if model.logits:
        return {
            "temperature": t,
            "applied": False,
            "how": f"calibrated probabilities are softmax(logits / {t:.6g})" if t != 1.0 else "no temperature",
        }
    return {
        "temperature": t,
        "applied": t != 1.0,
        "how": f"the probabilities are softmax(logits / {t:.6g}), folded into the graph"
        if t != 1.0
        else "no temperature: the probabilities are softmax(logits)",
    }
