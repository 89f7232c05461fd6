"""Batches of a prepared stream's subset for a trained network: ``vggtune eval`` and ``vggtune embed`` with
``data.stream=...``."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from vggtune.core.errors import UserError
from vggtune.data.optional import import_stream
from vggtune.data.transforms import tta_transform
from vggtune.use.evaluation import LabelledImages, check_subset
from vggtune.use.inference import LoadedModel, Predictions


def subset_batches(
    source, subset: str, views, batch_size: int, num_workers: int
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Yield ``(x, positions)``: the views of a batch of the subset's images, (batch, views, 3, H, W), and
    each image's position in ``source.split().subsets[subset]``.

    The stored squares are the first step of the evaluation transform (resized to the model's resize
    size, centre-cropped square), so each view is cut from them as :func:`tta_transform` cuts it.
    """
    position = {index: i for i, (index, _, _) in enumerate(source.info["subsets"][subset]["files"])}
    dataset = source.dataset(subset, shuffle=False, augment=False, seed=0, with_index=True)
    for images, *_, index in import_stream().StreamLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        x = torch.stack([views(image.permute(2, 0, 1)) for image in images])
        yield (x.unsqueeze(1) if x.ndim == 4 else x), [position[int(i)] for i in index]


@torch.inference_mode()
def predict_stream(
    model: LoadedModel,
    url: str,
    subset: str,
    storage_options: dict | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    tta: str = "none",
    calibrate: bool = True,
) -> tuple[LabelledImages, Predictions]:
    """The ``subset`` images of the stream with their labels, and the model's probabilities for them."""
    stream = import_stream()
    source = stream.Stream(url, storage_options)
    source.check_fits(model.preprocessing, str(model.module.hparams.get("arch")), checkpoint=True)
    if list(source.info["classes"]) != list(model.class_names):
        raise UserError(
            f"data.stream {source.url} holds the classes {', '.join(source.info['classes'])}, but the "
            f"checkpoint was trained on {', '.join(model.class_names)}: evaluate on a stream of its "
            "classes"
        )
    split = source.split()
    if subset not in split.subsets:
        raise UserError(
            f"data.stream {source.url} has no {check_subset(subset)} subset (it has "
            f"{', '.join(split.subsets)}): pass data.subset=..."
        )
    items = split.subsets[subset]
    indices, chunks = [], []
    with tqdm(total=len(items), desc="Evaluating", unit="img", disable=None) as bar:
        for x, positions in subset_batches(
            source, subset, tta_transform(model.preprocessing, tta), batch_size, num_workers
        ):
            logits = model.module(x.flatten(0, 1).to(model.device)).float().cpu()
            chunks.append(logits.view(*x.shape[:2], -1))
            indices += positions
            bar.update(len(positions))
    temperature = model.temperature if calibrate and not model.multilabel else 1.0
    pred = Predictions(indices, torch.cat(chunks), temperature, {}, model.multilabel)
    return LabelledImages(items, f"the {subset} split of the stream {source.url}"), pred
