"""What the tasks after training share: a model from a checkpoint, its device, and batches of images.

A checkpoint carries the architecture, class names and preprocessing, so nothing here needs
the training data folder or config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vggtune.core.errors import UserError
from vggtune.data.images import is_image_name, load_rgb, to_rgb
from vggtune.data.transforms import eval_transform, tta_transform
from vggtune.model.arch import Preprocessing, imagenet_weights, preprocessing
from vggtune.model.checkpoint import model_from_checkpoint
from vggtune.model.module import VGGClassifier
from vggtune.model.weights import load_weights

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A trained classifier ready for inference, with what is needed to feed it."""

    module: VGGClassifier
    class_names: list[str]
    preprocessing: Preprocessing
    device: torch.device
    path: Path

    @property
    def transform(self):
        """The evaluation transform the model was trained with."""
        return eval_transform(self.preprocessing)

    @property
    def temperature(self) -> float:
        """The checkpoint's fitted temperature (1.0 when it has none)."""
        return self.module.temperature

    @property
    def multilabel(self) -> bool:
        """Several labels per image: sigmoid probabilities, each label over its threshold is predicted."""
        return self.module.multilabel

    @property
    def label_delim(self) -> str | None:
        """What separates the labels of an image in CSV cells (multi-label), else None."""
        return self.module.hparams.get("label_delim")

    def thresholds(self, threshold="auto") -> list[float]:
        """Multi-label: each label's cut; ``auto``: the checkpoint's (chosen on validation), else 0.5."""
        if threshold not in ("auto", None):
            return [float(threshold)] * len(self.class_names)
        return list(self.module.thresholds or [0.5] * len(self.class_names))

    def describe_calibration(self, threshold: float | None = None) -> str:
        """One line on whether (and with what) the probabilities are calibrated; multi-label, on the thresholds
        (``threshold``: the one cut given on the command line, if any)."""
        if self.multilabel:
            head = "several labels per image: a sigmoid probability per label; a label is predicted at or above "
            if threshold is not None:
                return head + f"threshold={threshold:g} (given), for every label"
            chosen = self.module.thresholds is not None and self.module.hparams.get("threshold") is None
            return head + (
                "its own threshold, chosen on the validation images"
                if chosen
                else f"{self.thresholds()[0]:g}, for every label"
            )
        c = self.module.calibration
        if not c:
            return (
                "probabilities not calibrated: the checkpoint has no temperature (trained without validation "
                "images, or every validation image was right, which leaves nothing to fit)"
            )
        return (
            f"probabilities calibrated: logits divided by the temperature {c['temperature']:.3f}, fitted on "
            f"{c['images']} validation images at epoch {c['epoch']} (their ECE {c['ece']:.3f} -> "
            f"{c['ece_calibrated']:.3f})"
        )


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (a GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``; a UserError if it is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no GPU is available: use device=cpu or device=auto")
    return device


def load_model(ckpt: str | Path, device: str = "auto") -> LoadedModel:
    """The checkpoint's model in eval mode on ``device`` (checkpoint loaded with ``weights_only=True``)."""
    module = model_from_checkpoint(ckpt)
    dev = pick_device(device)
    module.to(dev).eval()
    prep = Preprocessing.from_dict(module.hparams["preprocessing"])
    return LoadedModel(module, list(module.class_names), prep, dev, Path(str(ckpt)).expanduser())


def load_pretrained(
    arch: str, weights: str = "imagenet", image_size: int | None = None, device: str = "auto"
) -> LoadedModel:
    """torchvision's ImageNet VGG as it was trained (1000-class head, category names), in eval mode.

    ``weights`` is ``imagenet``, a state-dict file in torchvision's layout, or ``none`` (random
    init, useful only for trying the pipeline: its outputs mean nothing).
    """
    dev = pick_device(device)
    prep = preprocessing(arch, image_size)
    categories = list(imagenet_weights(arch).meta["categories"])
    module = VGGClassifier(arch, categories, weights="none", preprocessing=prep.to_dict())
    load_weights(module.model, arch, weights, head=True)
    if str(weights).lower() == "none":
        log.warning("model.weights=none: a randomly initialised %s; its outputs mean nothing", arch)
    module.to(dev).eval()
    return LoadedModel(module, categories, prep, dev, Path(str(weights)))


def load_model_or_pretrained(
    ckpt: str | None, arch: str, weights: str = "imagenet", image_size: int | None = None, device: str = "auto"
) -> LoadedModel:
    """The checkpoint's classifier when ``ckpt`` is given, else torchvision's ImageNet VGG ``arch``.

    ``arch``, ``weights`` and ``image_size`` matter only without a checkpoint, which brings its own.
    """
    if not ckpt:
        if str(weights).lower() == "none":
            log.warning(
                "No ckpt given and model.weights=none: using a randomly initialised %s (its features "
                "mean nothing; pass ckpt= or model.weights=imagenet)",
                arch,
            )
        else:
            log.info("No ckpt given: using torchvision's ImageNet %s (model.weights=%s)", arch, weights)
        return load_pretrained(arch, weights, image_size, device)
    loaded = load_model(ckpt, device)
    if image_size is not None and image_size != loaded.preprocessing.image_size:
        log.warning(
            "data.image_size=%s ignored: the checkpoint was trained on %d px and keeps its preprocessing",
            image_size,
            loaded.preprocessing.image_size,
        )
    return loaded


def find_images(input_path: str | Path) -> list[Path]:
    """One image file, or every file under a folder (recursively, hidden ones skipped), sorted.

    A folder yields all visible files, not only those with image extensions, so that callers
    can report the ones that are not images instead of passing over them in silence.
    """
    path = Path(str(input_path)).expanduser()
    if not path.exists():
        raise UserError(f"input {path} does not exist: pass input=<an image file or a folder of images>")
    if path.is_file():
        return [path]
    # Broken symlinks too (is_file() is False for them): they get a row saying they cannot be read.
    files = sorted(
        p
        for p in path.rglob("*")
        if (p.is_file() or p.is_symlink())
        and not p.is_dir()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise UserError(f"input folder {path} holds no files")
    return files


class _PathDataset(Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        if isinstance(path, (Image.Image, torch.Tensor)):  # an image in memory (the Python API): PIL or (3, H, W)
            return self.transform(to_rgb(path) if isinstance(path, Image.Image) else path), index, ""
        path = Path(path)
        if not is_image_name(path.name):
            return None, index, f"not an image file name ({path.suffix or 'no extension'})"
        try:
            return self.transform(load_rgb(path)), index, ""
        except Exception as e:  # noqa: BLE001 - report the file and go on with the others
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return None, index, f"not a readable image ({text})"


def _collate(items):
    good = [(x, i) for x, i, err in items if x is not None]
    bad = [(i, err) for x, i, err in items if x is None]
    x = torch.stack([t for t, _ in good]) if good else None
    return x, [i for _, i in good], bad


def image_batches(
    paths: list[Path], transform, batch_size: int = 64, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]]:
    """Yield ``(images, indices, failures)``: a batch of the readable images and why the others failed.

    ``indices`` and the failure indices point into ``paths``; a batch with no readable image
    yields ``None`` for the images.
    """
    loader = DataLoader(
        _PathDataset(paths, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    yield from loader


@dataclass
class Predictions:
    """Class probabilities for the readable images among some paths, and why the others were left out."""

    indices: list[int]  # into the paths, one per row of ``probs``
    logits: torch.Tensor  # (len(indices), views, classes) as the network gave them; one view without TTA
    temperature: float  # the logits are divided by it before the softmax (1.0: uncalibrated)
    failures: dict[int, str]  # index into the paths -> reason the file was not predicted
    multilabel: bool = False  # a sigmoid per label instead of a softmax over the classes

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.multilabel else (logits / self.temperature).softmax(dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        """(len(indices), classes) float32 on the CPU: the mean over the views of ``softmax(logits / T)``
        (multi-label: of each label's sigmoid)."""
        return self._activate(self.logits).mean(dim=1)

    @property
    def plain_probs(self) -> torch.Tensor:
        """The probabilities of the plain evaluation view alone (what ``tta=none`` gives)."""
        return self._activate(self.logits[:, 0])

    def uncalibrated(self) -> Predictions:
        """The same predictions with the temperature left out."""
        return Predictions(self.indices, self.logits, 1.0, self.failures, self.multilabel)

    def with_temperature(self, temperature: float) -> Predictions:
        """The same predictions with the logits divided by ``temperature``."""
        return Predictions(self.indices, self.logits, temperature, self.failures, self.multilabel)


@torch.inference_mode()
def view_logits(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """The network's logits (batch, views, classes), float32 on the CPU, for what :func:`tta_transform` gives
    a batch of images: (batch, 3, H, W), or (batch, views, 3, H, W) with test-time augmentation."""
    views = images.unsqueeze(1) if images.ndim == 4 else images
    dtype = next(model.module.parameters()).dtype  # bfloat16 where serve runs precision=bf16
    logits = model.module(views.flatten(0, 1).to(model.device, dtype)).float().cpu()
    return logits.view(*views.shape[:2], -1)


def temperature_for(model: LoadedModel, calibrate: bool) -> float:
    """What the logits are divided by before the softmax: the checkpoint's temperature, or 1 (multi-label,
    or ``calibrate`` off)."""
    return model.temperature if calibrate and not model.multilabel else 1.0


@torch.inference_mode()
def predict_probabilities(
    model: LoadedModel,
    paths: list[Path],
    batch_size: int = 32,
    num_workers: int = 0,
    desc: str = "Predicting",
    tta: str = "none",
    calibrate: bool = True,
) -> Predictions:
    """The probabilities of ``model`` for each readable image in ``paths``, in batches, with a progress bar.

    ``paths`` may also hold images in memory (PIL images, or RGB tensors (3, H, W) of uint8 or of floats in
    [0, 1]), which go through the same transform as the files.

    ``tta`` (:data:`~vggtune.data.transforms.TTA_MODES`) averages the probabilities of several views
    of each image; ``calibrate`` divides the logits by the checkpoint's temperature. The bar is shown
    only on a terminal (tqdm's ``disable=None``), so logs and captured output stay clean.
    """
    indices, chunks = [], []
    failures: dict[int, str] = {}
    transform = tta_transform(model.preprocessing, tta)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=None) as bar:
        for images, idx, bad in image_batches(paths, transform, batch_size, num_workers):
            failures.update(bad)
            if images is not None:
                chunks.append(view_logits(model, images))
                indices += idx
            bar.update(len(idx) + len(bad))
    logits = torch.cat(chunks) if chunks else torch.empty(0, 1, len(model.class_names))
    return Predictions(indices, logits, temperature_for(model, calibrate), failures, model.multilabel)
