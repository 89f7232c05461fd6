"""What ``vggtune serve`` runs requests through: a checkpoint in PyTorch, or an exported ONNX file in onnxruntime.

Both take decoded RGB images and give one probability per class, as ``predict`` does: the
checkpoint backend goes through :func:`vggtune.use.inference.view_logits` and
:class:`~vggtune.use.inference.Predictions`, the very code ``predict`` uses, so the two agree to
the last bit on the same files. The ONNX backend needs neither torch's checkpoint nor vggtune's
model code at run time, only the file and the JSON ``export`` writes beside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vggtune import __version__
from vggtune.core.errors import UserError
from vggtune.data.transforms import check_tta, tta_transform, unit_transform
from vggtune.model.arch import Preprocessing


def file_version(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: changes whenever the served weights do."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def model_name(path: Path) -> str:
    """``<run folder>/<file>`` for a checkpoint in a run's ``checkpoints/`` folder, else the file's name."""
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


@dataclass
class Backend:
    """A served classifier: its classes, how its input is prepared, and a batch -> probabilities function."""

    path: Path
    class_names: list[str]
    preprocessing: Preprocessing
    multilabel: bool
    thresholds: list[float] | None
    temperature: float
    kind: str  # torch | onnx | torchscript
    tta: str = "none"
    precision: str = "fp32"  # fp32 | bf16 | int8 (a quantized file)
    version: str = ""
    extra: dict = field(default_factory=dict)

    def transform(self, image: Image.Image) -> torch.Tensor:
        """One decoded image -> its views (views, 3, H, W), as the model's input wants them."""
        raise NotImplementedError

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """(batch, views, 3, H, W) -> (batch, classes) probabilities, averaged over the views."""
        raise NotImplementedError

    @property
    def can_explain(self) -> bool:
        """Grad-CAM needs the network's gradients: the checkpoint backend only."""
        return False

    def heatmap(self, image: Image.Image, view: torch.Tensor, target: int) -> Image.Image:
        """The Grad-CAM overlay of class ``target`` on ``image``; only where :attr:`can_explain`."""
        raise NotImplementedError

    def info(self) -> dict:
        """What ``GET /info`` reports about the model."""
        prep = self.preprocessing
        return {
            "name": model_name(self.path),
            "version": self.version,
            "vggtune": __version__,
            "backend": self.kind,
            "precision": self.precision,
            "classes": self.class_names,
            "multilabel": self.multilabel,
            "thresholds": dict(zip(self.class_names, self.thresholds)) if self.thresholds else None,
            "image_size": prep.image_size,
            "temperature": self.temperature,
            "tta": self.tta,
            "preprocessing": {
                "resize_short_side": prep.resize_size,
                "center_crop": prep.image_size,
                "mean": list(prep.mean),
                "std": list(prep.std),
            },
            "explain": self.can_explain,
            **self.extra,
        }


class TorchBackend(Backend):
    """A training checkpoint, loaded as ``predict`` loads it."""

    def __init__(
        self,
        path: Path,
        device: str,
        tta: str = "none",
        calibrate: bool = True,
        threshold="auto",
        precision: str = "fp32",
    ):
        from vggtune.use.inference import load_model, temperature_for

        self.loaded = load_model(path, device)
        m = self.loaded
        if precision == "bf16":  # the network's weights and arithmetic; the softmax stays float32
            m.module.model.to(torch.bfloat16)
        super().__init__(
            path,
            list(m.class_names),
            m.preprocessing,
            m.multilabel,
            m.thresholds(threshold) if m.multilabel else None,
            temperature_for(m, calibrate),
            "torch",
            check_tta(tta),
            precision=precision,
            extra={"device": str(m.device), "calibration": m.describe_calibration()},
        )
        self._views = tta_transform(m.preprocessing, tta)

    def transform(self, image: Image.Image) -> torch.Tensor:
        x = self._views(image)
        return x.unsqueeze(0) if x.ndim == 3 else x

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        from vggtune.use.inference import Predictions, view_logits

        logits = view_logits(self.loaded, views)
        return Predictions(list(range(len(views))), logits, self.temperature, {}, self.multilabel).probs

    @property
    def can_explain(self) -> bool:
        return self.precision == "fp32"  # Grad-CAM's gradients in bfloat16 would be coarse

    def heatmap(self, image: Image.Image, view: torch.Tensor, target: int) -> Image.Image:
        """The Grad-CAM overlay of class ``target`` on ``image`` (``view``: its plain evaluation view)."""
        from vggtune.inspect.gradcam import CropBox, gradcam, overlay
        from vggtune.model.arch import feature_layers

        net = self.loaded.module.model
        layer = list(feature_layers(net).values())[-1]  # the last conv block: explain's default
        box = CropBox.of(image.size, self.preprocessing)
        # LitServe's workers run predict without autograd; Grad-CAM needs it.
        with torch.inference_mode(False), torch.enable_grad():
            x = view.unsqueeze(0).clone().to(self.loaded.device)
            heat = gradcam(net, layer, x, [target], box, image.size)[0]
        return overlay(image, heat, box)


class FileBackend(Backend):
    """A file written by ``vggtune export`` (ONNX or TorchScript); its ``.json`` says the rest."""

    kind = "file"

    def __init__(
        self,
        path: Path,
        device: str,
        tta: str = "none",
        calibrate: bool = True,
        threshold="auto",
        precision: str = "fp32",
    ):
        sidecar = path.with_name(path.name + ".json")
        if not sidecar.is_file():
            raise UserError(f"{sidecar} not found: serve a file written by 'vggtune export', which writes it")
        if check_tta(tta) != "none":
            raise UserError("tta works with ckpt= only: an exported file is served with tta=none")
        meta = json.loads(sidecar.read_text())
        quantized = meta.get("quantized") or {}
        if quantized.get("within_tolerance") is False:
            raise UserError(
                f"{path.name} was refused by 'vggtune export': it loses "
                f"{quantized['check']['accuracy_drop_points']:.2f} accuracy points against fp32 "
                f"(max_accuracy_drop={quantized['max_accuracy_drop']:g}); export it again with "
                "force=true to serve it anyway"
            )
        self.logits = meta.get("output") == "logits"
        multilabel = bool(meta.get("multilabel"))
        names = list(meta["class_names"])
        cut = meta.get("thresholds") or {}
        thresholds = (
            (
                [float(threshold)] * len(names)
                if threshold not in ("auto", None)
                else [float(cut.get(n, 0.5)) for n in names]
            )
            if multilabel
            else None
        )
        stored = float((meta.get("calibration") or {}).get("temperature", 1.0))
        # With logits=true the graph leaves the temperature to us; otherwise it is folded in (or was turned off).
        temperature = stored if self.logits and calibrate and not multilabel else 1.0
        prep = Preprocessing(int(meta["image_size"]), int(meta["resize_size"]), tuple(meta["mean"]), tuple(meta["std"]))
        runs_on = self._open(path, device, meta)
        name = Path(path.name).suffixes
        precision = "int8" if ".int8" in name else "bf16" if ".bf16" in name else "fp32"
        super().__init__(
            path,
            names,
            prep,
            multilabel,
            thresholds,
            temperature,
            self.kind,
            "none",
            precision=precision,
            extra={"device": runs_on, "calibration": meta.get("calibration")},
        )
        # The graph normalises itself: it takes float RGB in [0, 1] after the resize and the centre crop.
        self._prepare = unit_transform(prep)

    def _open(self, path: Path, device: str, meta: dict) -> str:
        """Load the file; return what it runs on."""
        raise NotImplementedError

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transform(self, image: Image.Image) -> torch.Tensor:
        return self._prepare(image).unsqueeze(0)

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        out = self._run(views[:, 0].contiguous()).float()
        if not self.logits:
            return out
        return out.sigmoid() if self.multilabel else (out / self.temperature).softmax(dim=-1)


class OnnxBackend(FileBackend):
    """An ONNX file (fp32 or int8), run by onnxruntime."""

    kind = "onnx"

    def _open(self, path: Path, device: str, meta: dict) -> str:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("serving an ONNX file needs onnxruntime: pip install 'vggtune[export]'") from None
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.input_name = meta.get("input_name", "image")
        return providers[0]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: np.ascontiguousarray(x.numpy())})[0])


class TorchScriptBackend(FileBackend):
    """A TorchScript file (fp32 or bf16), run by ``torch.jit.load``."""

    kind = "torchscript"

    def _open(self, path: Path, device: str, meta: dict) -> str:
        from vggtune.use.export import torchscript_runner

        self._runner = torchscript_runner(path)
        return "cpu"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self._runner(x)


FILE_BACKENDS = {".onnx": OnnxBackend, ".pt": TorchScriptBackend}


def load_backend(
    ckpt: str | None,
    model: str | None,
    device: str = "auto",
    tta: str = "none",
    calibrate: bool = True,
    threshold="auto",
    precision: str = "fp32",
) -> Backend:
    """The backend for ``ckpt=`` (a training checkpoint) or ``model=`` (an exported ``.onnx`` or ``.pt``): exactly
    one; ``precision=bf16`` runs a checkpoint's network in bfloat16."""
    if bool(ckpt) == bool(model):
        raise UserError("give exactly one of ckpt=<run>/checkpoints/best.ckpt or model=<file>.onnx")
    path = Path(str(ckpt or model)).expanduser()
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass ckpt=<run>/checkpoints/best.ckpt or model=<file>.onnx")
    if model and path.suffix.lower() not in FILE_BACKENDS:
        raise UserError(
            f"model= takes a file written by 'vggtune export' (.onnx, or .pt for TorchScript; "
            f"{path.name} is neither); serve a checkpoint with ckpt="
        )
    if model and precision != "fp32":
        raise UserError(
            f"precision={precision} applies to ckpt=; an exported file runs in the precision it was "
            "exported in (vggtune export quantize=int8 or quantize=bf16)"
        )
    backend = (FILE_BACKENDS[path.suffix.lower()] if model else TorchBackend)(
        path, device, tta, calibrate, threshold, precision
    )
    backend.version = file_version(path)
    return backend
