"""The LitServe API: decode each request, run the requests LitServe batched together as one forward pass,
answer each with its own top-k (and Grad-CAM heatmap when asked)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import cast

import litserve as ls
import torch
from fastapi.responses import JSONResponse
from PIL import Image

from vggtune.serve.backends import Backend, load_backend
from vggtune.serve.loop import IdleWaitBatchedLoop
from vggtune.serve.requests import RequestError, decode_image, parse_options, payload_images


@dataclass
class Decoded:
    """One request, decoded: each image's views (views, 3, H, W), the images themselves (for heatmaps)."""

    views: list[torch.Tensor]
    images: list[Image.Image]
    top_k: int
    explain: bool


class ClassifierAPI(ls.LitAPI):
    """``POST /predict``: JSON ``{"images": [<base64>...], "top_k": k, "explain": bool}`` (the HTTP layer turns
    uploads and raw bodies into it) -> ``{"predictions": [...], "model": ..., "version": ...}``."""

    def __init__(self, settings: dict, max_batch_size: int = 1, batch_timeout: float = 0.0):
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            loop=IdleWaitBatchedLoop() if max_batch_size > 1 else "auto",
        )
        self.settings = settings  # plain values: the API is pickled into each worker process
        self.backend: Backend | None = None

    def setup(self, device: str) -> None:
        s = self.settings
        self.backend = load_backend(
            s["ckpt"], s["model"], device, s["tta"], s["calibrate"], s["threshold"], s["precision"]
        )
        self.names = self.backend.class_names

    def decode_request(self, request: dict) -> Decoded | RequestError:
        assert self.backend is not None  # setup() loaded it
        # A bad request is returned, not raised: LitServe answers an exception raised while it decodes a
        # batch with that error for every request in the batch, and the good ones must still be answered.
        try:
            top_k, explain = parse_options(request, self.settings["top_k"], len(self.names))
            if explain and not self.backend.can_explain:
                raise RequestError(400, "explain=true needs the checkpoint: this server runs an ONNX file")
            images = [decode_image(b, self.settings["max_pixels"]) for b in payload_images(request)]
        except RequestError as e:
            return e
        views = [self.backend.transform(im) for im in images]
        return Decoded(views, images if explain else [], top_k, explain)

    def batch(self, inputs: list) -> list:
        return inputs  # requests hold different numbers of images: predict stacks them itself

    def predict(self, x):
        assert self.backend is not None
        requests = x if isinstance(x, list) else [x]
        good = [r for r in requests if isinstance(r, Decoded)]
        if good:
            probs = self.backend.probabilities(torch.stack([v for r in good for v in r.views]))
        out: list[RequestError | list[dict]] = []
        start = 0
        for r in requests:
            if isinstance(r, RequestError):
                out.append(r)
                continue
            out.append([self._answer(p, r, i) for i, p in enumerate(probs[start : start + len(r.views)])])
            start += len(r.views)
        return out if isinstance(x, list) else out[0]

    def unbatch(self, output: list) -> list:
        return output

    def _answer(self, p: torch.Tensor, request: Decoded, i: int) -> dict:
        assert self.backend is not None
        top = p.topk(request.top_k)
        answer = {
            "top": [
                {"class": self.names[c], "probability": round(float(v), 6)}
                for v, c in zip(top.values.tolist(), top.indices.tolist())
            ],
            "probabilities": {n: float(v) for n, v in zip(self.names, p.tolist())},
        }
        if self.backend.multilabel:
            thresholds = cast(list, self.backend.thresholds)  # a multi-label backend has them
            answer["labels"] = [self.names[c] for c in p.argsort(descending=True).tolist() if p[c] >= thresholds[c]]
        if request.explain:
            overlay = self.backend.heatmap(request.images[i], request.views[i][0], int(top.indices[0]))
            buf = io.BytesIO()
            overlay.save(buf, format="PNG")
            answer["heatmap_png"] = base64.b64encode(buf.getvalue()).decode()
            answer["heatmap_class"] = self.names[int(top.indices[0])]
        return answer

    def encode_response(self, output):
        if isinstance(output, RequestError):
            return JSONResponse({"error": output.message}, status_code=output.status)
        return {"predictions": output, "model": self.settings["name"], "version": self.settings["version"]}
