"""What the Python API (:mod:`vggtune.api`) takes as images and gives back as tables."""

from __future__ import annotations

from pathlib import Path

from vggtune.core.errors import UserError


def images_of(inputs) -> list:
    """The images ``Model.predict`` takes, one per item: Paths (files, or every file under a folder), PIL
    images and (3, H, W) tensors."""
    import torch
    from PIL import Image

    from vggtune.use.inference import find_images

    if isinstance(inputs, (str, Path)):
        return find_images(inputs)
    if isinstance(inputs, Image.Image):
        return [inputs]
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 4:
            return [checked_tensor(t) for t in inputs]
        return [checked_tensor(inputs)]
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise UserError("predict() got an empty list: pass image files, a folder, PIL images or tensors")
        return [item for one in inputs for item in images_of(one)]
    raise UserError(
        f"predict() cannot read a {type(inputs).__name__}: pass an image file, a folder, a PIL image, "
        "a (3, H, W) or (N, 3, H, W) tensor, or a list of these"
    )


def checked_tensor(t):
    """``t`` on the CPU if it is an RGB image (3, H, W) of uint8 or of floats in [0, 1], else a UserError."""
    import torch

    if t.ndim != 3 or t.shape[0] != 3:
        raise UserError(f"a tensor image is RGB, (3, H, W) or a batch (N, 3, H, W), got shape {tuple(t.shape)}")
    if t.is_floating_point() and (t.min() < 0 or t.max() > 1):
        raise UserError(
            "a float tensor image holds values in [0, 1] (or pass uint8 0-255), not normalised ones: "
            f"got values from {float(t.min()):.3g} to {float(t.max()):.3g}"
        )
    if not t.is_floating_point() and t.dtype != torch.uint8:
        raise UserError(f"a tensor image is uint8 (0-255) or float in [0, 1], got {t.dtype}")
    return t.detach().cpu()


def input_name(item) -> str | None:
    """What the ``path`` column says: the file (absolute, as the CSV has it), a PIL image's own file, or None."""
    if isinstance(item, Path):
        return str(item.absolute())
    filename = getattr(item, "filename", "")
    return str(Path(filename).absolute()) if filename else None


def as_table(header: list[str], rows: list[list], as_frame: bool | None):
    """A DataFrame of the rows when pandas is there (or ``as_frame`` asks for one), else a list of dicts."""
    if as_frame is not False:
        try:
            import pandas as pd
        except ImportError:
            if as_frame:
                raise UserError("as_frame=True needs pandas: pip install pandas (or as_frame=False)") from None
        else:
            return pd.DataFrame(rows, columns=header)
    return [dict(zip(header, row)) for row in rows]


def image_file(image, scratch: Path) -> Path:
    """The file ``explain`` reads: ``image`` itself, or a PIL image or tensor saved as a PNG in ``scratch``."""
    import torch
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(str(image)).expanduser()
        if path.is_dir():
            raise UserError(
                f"explain() takes one image, and {path} is a folder: vggtune explain input={path} explains each "
                "of its images"
            )
        return path
    if isinstance(image, torch.Tensor):
        from torchvision.transforms.functional import to_pil_image

        image = to_pil_image(checked_tensor(image))
    if not isinstance(image, Image.Image):
        raise UserError(f"explain() cannot read a {type(image).__name__}: pass an image file, a PIL image or a tensor")
    name = Path(getattr(image, "filename", "") or "image.png").with_suffix(".png").name
    path = scratch / name
    image.save(path)
    return path
