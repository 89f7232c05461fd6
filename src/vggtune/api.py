"""The Python API, for notebooks: ``vggtune.train(...)`` and ``vggtune.load(...)``, thin over the tasks.

::

    import vggtune

    run = vggtune.train("~/pictures/flowers", model="vgg16", trainer={"max_epochs": 5})
    model = vggtune.load(run)
    model.predict("~/pictures/unsorted")          # a DataFrame: path, class_1, probability_1, ...

Each call is the command of the same name, with the same checks and one-line errors (a
:class:`~vggtune.core.errors.UserError`), the same run folder and files: ``train`` is ``vggtune train``,
``Model.evaluate`` is ``vggtune eval``, ``Model.export`` is ``vggtune export``, ``Model.explain`` is
``vggtune explain``. ``Model.predict`` classifies in memory, as ``vggtune predict`` does, without a CSV.
How keyword arguments become overrides: :func:`vggtune.api_hydra.to_overrides`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vggtune.api_hydra import hydra_value, run_task, to_overrides
from vggtune.api_inputs import as_table, image_file, images_of, input_name
from vggtune.core.errors import RunComplete, UserError
from vggtune.use.inference import LoadedModel, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """A finished run: its folder, its final metrics, and its ``metrics.json`` (``summary``)."""

    folder: Path
    metrics: dict[str, float]
    summary: dict = field(repr=False)

    @property
    def best_checkpoint(self) -> Path | None:
        """The best checkpoint of a training run (by its ``monitor``), or None (or for an evaluation)."""
        best = self.summary.get("best_checkpoint")
        return Path(best) if best else None

    def load(self, device: str = "auto") -> Model:
        """The run's best checkpoint as a :class:`Model`."""
        return load(self, device)


def train(data: str | Path | None = None, /, *overrides: str, **options: Any) -> Run:
    """``vggtune train``: fine-tune on ``data`` and return the :class:`Run` (folder, metrics, best checkpoint).

    ``data`` is a folder of class folders (``data.root``) or a CSV file of paths and labels (``data.labels``);
    None leaves it to the overrides (``experiment="demo"``, ``data__stream=...``). ``overrides`` are
    Hydra strings as typed after ``vggtune train`` (``"trainer.max_epochs=2"``, ``"model=vgg11"``);
    ``options`` are keywords for the same (``model="vgg11"``, ``trainer={"max_epochs": 2}``,
    ``data__batch_size=8``, ``**{"optim.lr": 1e-3}``), applied after them. Bad input raises a
    :class:`~vggtune.core.errors.UserError` with the command line's one line.
    """
    args = [*_data_overrides(data), *to_overrides(overrides, options)]
    try:
        folder, summary = run_task("train", args, "train")
    except RunComplete as done:  # resume= a finished run: it is the answer, as the command line says (exit 0)
        summary_file = Path(done.run_dir) / "metrics.json"
        if not summary_file.is_file():
            raise UserError(f"{done} ({summary_file} is missing, so there is no run to return)") from None
        log.warning("%s", done)
        folder, summary = Path(done.run_dir), json.loads(summary_file.read_text())
    return Run(folder, dict(summary["metrics"]), summary)


def load(ckpt: str | Path | Run, device: str = "auto") -> Model:
    """A trained model from a checkpoint file, a run folder (its ``checkpoints/best.ckpt``) or a :class:`Run`.

    ``device``: ``auto`` (a GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``.
    """
    if isinstance(ckpt, Run):
        if ckpt.best_checkpoint is None:
            raise UserError(f"run {ckpt.folder} has no best checkpoint: load a checkpoint file instead")
        ckpt = ckpt.best_checkpoint
    path = Path(str(ckpt)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.ckpt"
    return Model(load_model(path, device), device)


def _data_overrides(data: str | Path | None) -> list[str]:
    """``data.labels=`` for a CSV file, else ``data.root=`` (nothing for None)."""
    if data is None:
        return []
    path = Path(str(data)).expanduser()
    key = "data.labels" if path.suffix.lower() == ".csv" else "data.root"
    return [f"{key}={hydra_value(str(path))}"]


class Model:
    """A trained classifier (see :func:`load`): ``classes``, and the tasks after training as methods."""

    def __init__(self, loaded: LoadedModel, device: str = "auto"):
        self.loaded = loaded
        self._device = device

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, {len(self.classes)} classes, {self.loaded.device})"

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.loaded.path

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the network's outputs."""
        return list(self.loaded.class_names)

    @property
    def multilabel(self) -> bool:
        """Several labels per image (sigmoid probabilities, each label over its threshold) instead of one class."""
        return self.loaded.multilabel

    def predict(
        self,
        inputs,
        *,
        top_k: int = 3,
        tta: str = "none",
        calibrate: bool = True,
        threshold: float | str = "auto",
        batch_size: int = 32,
        num_workers: int | str = 0,
        as_frame: bool | None = None,
    ):
        """Classify ``inputs``: one row per image, in order, as in ``vggtune predict``'s CSV.

        ``inputs``: an image file or a folder (every file under it, as ``vggtune predict input=``), a PIL
        image, an RGB tensor (3, H, W) or a batch (N, 3, H, W) (uint8, or floats in [0, 1]; any size: it is
        resized and cropped as the files are), or a list of these. The columns: ``path`` (None for an
        image in memory, unless it came from a file), ``class_1``, ``probability_1`` ... up to ``top_k``
        (several labels per image: ``labels`` and a ``prob_<label>`` per label), and ``error`` (why a file
        was not classified, else ""). The keywords are ``vggtune predict``'s keys of the same names.

        Returns a pandas DataFrame when pandas is installed (``as_frame=None``) or asked for (``True``),
        else a list of dicts (``as_frame=False``).
        """
        from vggtune.core.checks import check_bool, check_positive_int
        from vggtune.data.transforms import check_tta
        from vggtune.data.workers import resolve_workers
        from vggtune.tasks.checks import check_threshold
        from vggtune.tasks.predict import check_readable, fit_to_model, prediction_table
        from vggtune.use.inference import predict_probabilities

        top_k = check_positive_int("top_k", top_k)
        batch_size = check_positive_int("batch_size", batch_size)
        workers = resolve_workers(num_workers, "num_workers")
        tta, calibrate = check_tta(tta), check_bool("calibrate", calibrate)
        cut = check_threshold(threshold)
        items = images_of(inputs)
        top_k = fit_to_model(self.loaded, top_k, cut, top_k_given=top_k != 3)
        pred = predict_probabilities(self.loaded, items, batch_size, workers, tta=tta, calibrate=calibrate)
        check_readable(items, pred, inputs)
        header, rows = prediction_table([input_name(item) for item in items], pred, self.loaded, top_k, cut)
        return as_table(header, rows, as_frame)

    def evaluate(self, data: str | Path | None = None, /, *overrides: str, **options: Any) -> Run:
        """``vggtune eval``: accuracy, F1, per-class scores, confusion matrix and mistakes on labelled images.

        ``data``: a folder of class folders, a CSV file of paths and labels, or None for the checkpoint's own
        run's ``data.subset`` split (test). ``overrides``/``options`` as for :func:`train` (``tta="flip"``,
        ``data__subset="val"``). Returns the evaluation's :class:`Run`: ``metrics`` (``acc``, ``f1``, ...) and
        its folder with ``metrics.json``, ``per_class.csv``, ``confusion_matrix.png``, ``misclassified.csv``.
        """
        folder, summary = run_task(
            "eval", [*self._task_args(), *_data_overrides(data), *to_overrides(overrides, options)], "evaluate"
        )
        return Run(folder, dict(summary["metrics"]), summary)

    def export(self, output: str | Path | None = None, /, *overrides: str, **options: Any) -> Path:
        """``vggtune export``: write the model as an ONNX file (``format="torchscript"`` for TorchScript) and
        ``<file>.json`` beside it; return the file's path.

        ``output`` None: ``model.onnx`` in the export's run folder. ``quantize="int8"`` and the other keys of
        ``vggtune export`` are keywords here, as for :func:`train`.
        """
        given = [] if output is None else [f"output={hydra_value(str(Path(str(output)).expanduser().absolute()))}"]
        folder, info = run_task(
            "export",
            [f"ckpt={hydra_value(str(self.path))}", *given, *to_overrides(overrides, options)],
            "export_checkpoint",
        )
        return Path(str(output)).expanduser().absolute() if output is not None else folder / info["file"]

    def explain(self, image, /, *overrides: str, **options: Any) -> Explanation:
        """``vggtune explain`` for one image (a file, a PIL image or a (3, H, W) tensor): Grad-CAM heatmaps of
        its ``top_k`` classes (3) and the feature maps of each conv block, written to a run folder.

        Keywords are ``vggtune explain``'s keys (``top_k=5``, ``layer="block4"``). Returns an
        :class:`Explanation`; in a notebook, ``.figure()`` draws the overlays.
        """
        with tempfile.TemporaryDirectory() as scratch:
            path = image_file(image, Path(scratch))
            args = [*self._task_args(), f"input={hydra_value(str(path))}", *to_overrides(overrides, options)]
            _, rows = run_task("explain", args, "run")
            return Explanation.from_rows(rows)

    def _task_args(self) -> list[str]:
        return [f"ckpt={hydra_value(str(self.path))}", f"device={hydra_value(self._device)}"]


@dataclass(frozen=True)
class Explanation:
    """What ``vggtune explain`` wrote for one image: its top classes, their heatmaps and overlay files."""

    folder: Path  # the image's folder in the explain run: gradcam_<rank>_<class>.png, heatmaps.npz, feature_maps.png
    classes: list[str]  # most probable first
    probabilities: list[float]
    heatmaps: Any = field(repr=False)  # numpy (top_k, height, width) in [0, 1], at the image's own size
    overlays: list[Path] = field(repr=False)

    @classmethod
    def from_rows(cls, rows: list[list]) -> Explanation:
        """From the rows :func:`vggtune.tasks.explain.run` returns for one image, and its ``heatmaps.npz``."""
        import numpy as np

        folder = Path(rows[0][4]).parent
        with np.load(folder / "heatmaps.npz") as saved:
            heatmaps = saved["heatmaps"].astype(np.float32)
        return cls(folder, [r[2] for r in rows], [float(r[3]) for r in rows], heatmaps, [Path(r[4]) for r in rows])

    def figure(self):
        """A matplotlib figure of the overlays side by side, each titled with its class and probability."""
        import matplotlib.pyplot as plt
        from PIL import Image

        fig, axes = plt.subplots(1, len(self.overlays), figsize=(4 * len(self.overlays), 4), squeeze=False)
        for ax, file, name, p in zip(axes[0], self.overlays, self.classes, self.probabilities):
            with Image.open(file) as im:
                ax.imshow(im)
            ax.set_title(f"{name} {p:.1%}")
            ax.axis("off")
        fig.tight_layout()
        return fig
