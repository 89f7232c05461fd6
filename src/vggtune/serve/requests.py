"""Turning one ``POST /predict`` body into images and options, or into a 4xx with a one-line reason.

The HTTP layer (:mod:`vggtune.serve.http`) hands every body to the model workers as JSON:
``{"images": [<base64>, ...], "top_k": 3, "explain": false}``. Everything a client can get wrong
is found here, before the model sees a pixel, and raised as :class:`RequestError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from vggtune.data.images import to_rgb

MAX_IMAGES = 64  # per request; more is a batch job for `vggtune predict`


class RequestError(Exception):
    """A client's mistake: the HTTP status and one line saying what is wrong and what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """The RGB image in ``data``; a 413 past ``max_pixels`` (checked before decoding), a 415 for a
    file that is not an image, a 400 for a damaged one."""
    if not data:
        raise RequestError(400, "empty image: send the file's bytes")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; the size check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        width, height = im.size
        if width * height > max_pixels:
            raise RequestError(
                413,
                f"image of {width}x{height} pixels is over the server's limit of {max_pixels:,} "
                "pixels: send a smaller image (or start the server with a larger max_pixels)",
            )
        im.load()
        return to_rgb(im)
    except RequestError:
        raise
    except Image.DecompressionBombError:  # raised only while MAX_IMAGE_PIXELS is set (not None)
        raise RequestError(
            413,
            f"image is over Pillow's decompression-bomb limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
            "pixels: send a smaller image",
        ) from None
    except UnidentifiedImageError:
        raise RequestError(415, "not an image Pillow can read: send a JPEG, PNG, BMP, GIF, WebP or TIFF file") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RequestError(400, f"damaged image ({reason}): send the whole file") from None


def parse_options(payload: dict, default_top_k: int, classes: int) -> tuple[int, bool]:
    """``top_k`` (1 to the number of classes; more is cut to it) and ``explain`` from the payload."""
    top_k = payload.get("top_k", default_top_k)
    if isinstance(top_k, str) and top_k.strip().isdigit():
        top_k = int(top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise RequestError(400, f"top_k must be a whole number of at least 1, got {top_k!r}")
    explain = payload.get("explain", False)
    if isinstance(explain, str):
        if explain.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise RequestError(400, f"explain must be true or false, got {explain!r}")
        explain = explain.lower() in ("true", "1", "yes")
    if not isinstance(explain, bool):
        raise RequestError(400, f"explain must be true or false, got {explain!r}")
    return min(top_k, classes), explain


def payload_images(payload) -> list[bytes]:
    """The decoded base64 strings of ``image`` (one) or ``images`` (a list) in a JSON payload."""
    if not isinstance(payload, dict):
        raise RequestError(400, 'the JSON body must be an object: {"images": ["<base64>", ...]}')
    items = payload.get("images", [payload["image"]] if "image" in payload else None)
    if items is None:
        raise RequestError(400, 'no image: send {"image": "<base64>"} or {"images": ["<base64>", ...]}')
    if not isinstance(items, list) or not items:
        raise RequestError(400, '"images" must be a non-empty list of base64 strings')
    if len(items) > MAX_IMAGES:
        raise RequestError(
            413,
            f"{len(items)} images in one request, at most {MAX_IMAGES}: split them, or use "
            "'vggtune predict' for a folder",
        )
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise RequestError(400, f"image {i} is not a base64 string")
        if item.startswith("data:") and "," in item:  # a data URL, as a browser's FileReader gives
            item = item.split(",", 1)[1]
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"image {i} is not valid base64") from None
    return out
