"""The serve layer in this process, without a server: request parsing, the API's steps on a tiny checkpoint, the
HTTP adapter and routes through Starlette's in-process TestClient, the counters and the watchdog.

tests/test_serve.py and tests/test_serve_faults.py start real servers (slow); these are the quick tier's."""

from __future__ import annotations

import base64
import io
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_one_line_error, run_cli_here
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from omegaconf import OmegaConf
from PIL import Image
from test_serve import png_claiming  # the module is slow; this helper is not

from vggtune.data.images import load_rgb
from vggtune.serve.api import ClassifierAPI
from vggtune.serve.faults import Watchdog
from vggtune.serve.http import Counters, RequestAdapter, install_routes
from vggtune.serve.requests import MAX_IMAGES, RequestError, decode_image, parse_options, payload_images
from vggtune.serve.server import API_PATH, build_server, describe
from vggtune.tasks.serve import exposure_warning, settings_from
from vggtune.use.inference import load_model

CONF = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "serve.yaml")


def _settings(ckpt, **overrides) -> dict:
    cfg = OmegaConf.merge({k: v for k, v in CONF.items() if k != "defaults"}, {"ckpt": str(ckpt)}, overrides)
    cfg.port = _free_port()
    return settings_from(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(width: int = 40, height: int = 30, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), (200, 10, 10, 0)[: len(mode)]).save(buf, format="PNG")
    return buf.getvalue()


# --- requests ------------------------------------------------------------------------------------


def test_an_image_is_decoded_to_rgb_and_each_kind_of_bad_body_gets_its_status():
    im = decode_image(_png(mode="RGBA"), max_pixels=10_000)
    assert im.mode == "RGB" and im.size == (40, 30)
    assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent pixels become white (data.images.to_rgb)
    for body, pixels, status, needle in [
        (b"", 10_000, 400, "empty image"),
        (png_claiming(1000, 1000), 10_000, 413, "1000x1000 pixels is over the server's limit of 10,000"),
        (png_claiming(100_000, 100_000), 10**12, 413, "decompression-bomb limit"),
        (b"plain text, not a picture", 10_000, 415, "not an image Pillow can read"),
        (_png()[:60], 10_000, 400, "damaged image"),
    ]:
        with pytest.raises(RequestError) as e:
            decode_image(body, pixels)
        assert e.value.status == status and needle in e.value.message and "\n" not in e.value.message


def test_options_are_checked_and_top_k_is_cut_to_the_classes():
    assert parse_options({}, default_top_k=3, classes=5) == (3, False)
    assert parse_options({"top_k": "9", "explain": "yes"}, 3, classes=5) == (5, True)
    for payload, needle in [
        ({"top_k": 0}, "top_k must be a whole number"),
        ({"top_k": True}, "top_k must be a whole number"),
        ({"explain": "perhaps"}, "explain must be true or false"),
        ({"explain": 2}, "explain must be true or false"),
    ]:
        with pytest.raises(RequestError, match=needle) as e:
            parse_options(payload, 3, 5)
        assert e.value.status == 400


def test_payload_images_take_one_a_list_or_data_urls_and_refuse_the_rest():
    raw = b"\x89PNG some bytes"
    b64 = base64.b64encode(raw).decode()
    assert payload_images({"image": b64}) == [raw]
    assert payload_images({"images": [b64, f"data:image/png;base64,{b64}"]}) == [raw, raw]
    for payload, status, needle in [
        ([b64], 400, "must be an object"),
        ({}, 400, "no image"),
        ({"images": []}, 400, "non-empty list"),
        ({"images": [b64] * (MAX_IMAGES + 1)}, 413, f"at most {MAX_IMAGES}"),
        ({"images": [3]}, 400, "image 0 is not a base64 string"),
        ({"images": [b64, "not base64!"]}, 400, "image 1 is not valid base64"),
    ]:
        with pytest.raises(RequestError, match=needle) as e:
            payload_images(payload)
        assert e.value.status == status


# --- the API's steps and the HTTP adapter, in this process --------------------------------------


@pytest.fixture(scope="module")
def api(tiny_ckpt):
    settings = _settings(tiny_ckpt, top_k=2, max_queue=1)
    info = describe(settings)  # loads the checkpoint once and names the model, as `vggtune serve` does
    api = ClassifierAPI(settings)
    api.setup("cpu")
    return api, info


def _direct(ckpt, images: list[bytes]) -> torch.Tensor:
    model = load_model(ckpt, "cpu")
    x = torch.stack([model.transform(load_rgb(io.BytesIO(b))) for b in images])
    with torch.inference_mode():
        return (model.module(x) / model.temperature).softmax(1)


def _app(api: ClassifierAPI, counters: Counters, max_queue: int | None = None) -> FastAPI:
    """The API's decode -> predict -> encode on a plain FastAPI route, behind the adapter, as LitServe runs them."""
    app = FastAPI()

    @app.post(API_PATH)
    async def predict(request: Request):
        decoded = api.decode_request(await request.json())
        return api.encode_response(api.predict([decoded])[0])

    install_routes(app, "<html>the page</html>", counters)
    app.add_middleware(RequestAdapter, path=API_PATH, max_bytes=200_000, counters=counters, max_queue=max_queue)
    return app


def test_describe_and_the_api_answer_with_the_checkpoints_probabilities(api, tiny_ckpt, tiny_data):
    api, info = api
    assert info["classes"] == api.names == sorted(d.name for d in tiny_data.iterdir())
    assert api.settings["name"] == "tiny.ckpt" and api.settings["version"]
    images = [p.read_bytes() for p in sorted(tiny_data.rglob("*.png"))[:3]]
    good = api.decode_request({"images": [base64.b64encode(b).decode() for b in images], "top_k": 5})
    bad = api.decode_request({"images": ["%%%"]})
    assert isinstance(bad, RequestError) and bad.status == 400
    answers = api.predict([good, bad])  # a bad request batched with a good one fails alone
    assert answers[1] is bad
    expected = _direct(tiny_ckpt, images)
    for answer, probs in zip(answers[0], expected):
        assert len(answer["top"]) == 3  # top_k=5 is cut to the three classes
        assert [answer["probabilities"][n] for n in api.names] == pytest.approx(probs.tolist(), abs=1e-6)
        assert answer["top"][0]["class"] == api.names[int(probs.argmax())]
    assert api.encode_response(bad).status_code == 400
    assert api.encode_response(answers[0])["model"] == "tiny.ckpt"


def test_explain_adds_a_heatmap_png_at_the_images_own_size(api):
    api, _ = api
    decoded = api.decode_request({"image": base64.b64encode(_png(48, 36)).decode(), "explain": True})
    answer = api.predict(decoded)[0]
    with Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))) as heatmap:
        assert heatmap.size == (48, 36)
    assert answer["heatmap_class"] == answer["top"][0]["class"]


def test_the_adapter_turns_raw_bodies_uploads_and_json_into_one_answer_and_refuses_the_rest(api):
    api, _ = api
    counters = Counters()
    client = TestClient(_app(api, counters))
    body = _png()
    raw = client.post(API_PATH, content=body, headers={"content-type": "image/png"}, params={"top_k": "1"})
    upload = client.post(API_PATH, files={"file": ("x.png", body, "image/png")}, data={"top_k": "1"})
    as_json = client.post(API_PATH, json={"image": base64.b64encode(body).decode(), "top_k": 1})
    assert raw.status_code == upload.status_code == as_json.status_code == 200, raw.text
    assert raw.json() == upload.json() == as_json.json() and len(raw.json()["predictions"][0]["top"]) == 1
    for kwargs, status, needle in [
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "content type 'text/plain'"),
        ({"content": b"x" * 200_001, "headers": {"content-type": "image/png"}}, 413, "over the server's limit"),
        ({"files": {"other": ("x.png", body, "image/png")}}, 400, "no file in the field 'file'"),
    ]:
        answer = client.post(API_PATH, **kwargs)
        assert answer.status_code == status and needle in answer.json()["error"], answer.text
    stats = client.get("/stats").json()
    assert stats["requests_served"] == 7 and stats["requests_in_flight"] == 0 and stats["requests_refused"] == 0
    assert client.get("/").text == "<html>the page</html>"


def test_past_max_queue_and_while_draining_the_adapter_answers_503_at_once(api):
    api, _ = api
    counters = Counters()
    client = TestClient(_app(api, counters, max_queue=1))
    assert counters.admit(1)  # one request in flight: the queue is full
    busy = client.post(API_PATH, content=_png(), headers={"content-type": "image/png"})
    assert busy.status_code == 503 and "max_queue" in busy.json()["error"] and busy.headers["retry-after"] == "1"
    counters.done(2.5)
    counters.draining.set()
    closing = client.post(API_PATH, content=_png(), headers={"content-type": "image/png"})
    assert closing.status_code == 503 and "shutting down" in closing.json()["error"]
    assert counters.stats() == {
        "requests_in_flight": 0,
        "requests_served": 1,
        "requests_refused": 1,
        "worker_restarts": 0,
        "draining": True,
    }
    assert counters.retry_after() == "3"  # the latency of the answered request, rounded up


def test_the_built_server_serves_the_page_and_asks_for_the_api_key(api, tiny_ckpt, monkeypatch):
    import litserve.server

    monkeypatch.setattr(litserve.server, "LIT_SERVER_API_KEY", None)  # build_server sets LitServe's global
    settings = _settings(tiny_ckpt, api_key="s3cret", device="cpu")
    server, counters = build_server(settings, describe(settings))
    client = TestClient(server.app)  # no lifespan: no model worker starts
    assert "<html" in client.get("/").text.lower()
    assert client.get("/stats").status_code == 401
    assert client.get("/stats", headers={"X-API-Key": "s3cret"}).json()["requests_served"] == 0
    counters.draining.set()
    assert client.post(API_PATH, content=_png(), headers={"content-type": "image/png"}).status_code == 503


# --- the watchdog ---------------------------------------------------------------------------------


class _Item(SimpleNamespace):
    def __init__(self, worker_id):
        super().__init__(worker_id=worker_id, response=None, event=threading.Event())


def test_the_watchdog_fails_requests_of_a_dead_worker_and_those_no_worker_took_in_time():
    counters = Counters(workers=2)
    buffer = {"queued": _Item(None), "on_worker_1": _Item(1), "on_worker_0": _Item(0)}
    dog = Watchdog(buffer, counters, timeout=5)
    dog._deaths = list(counters.worker_deaths)
    dog.sweep(now=100.0)
    assert not any(item.event.is_set() for item in buffer.values())
    counters.worker_deaths[1] += 1  # worker 1 died (faults.RestartingServer counts it)
    dog.sweep(now=104.0)
    assert buffer["on_worker_1"].response[0].status_code == 503 and buffer["on_worker_1"].event.is_set()
    assert not buffer["queued"].event.is_set() and not buffer["on_worker_0"].event.is_set()
    dog.sweep(now=105.0)  # queued since 100.0: timeout=5 s
    assert buffer["queued"].response[0].status_code == 504 and "timeout=5" in buffer["queued"].response[0].detail
    assert not buffer["on_worker_0"].event.is_set()  # being computed by a live worker: left alone


# --- settings -------------------------------------------------------------------------------------


def test_bad_settings_fail_with_one_line_before_anything_starts(tmp_path, tiny_ckpt):
    ckpt = tiny_ckpt
    cases = [
        ((), "exactly one of ckpt="),
        ((f"ckpt={ckpt}", "port=80"), "port"),
        ((f"ckpt={ckpt}", "host=example.com"), "host"),
        ((f"model={ckpt}",), f"{ckpt.name} is neither"),
        ((f"ckpt={ckpt}", "max_batch_size=0"), "max_batch_size"),
        ((f"ckpt={ckpt}", "tta=spin"), "tta"),
        ((f"ckpt={ckpt}", "batch_timeout=5", "timeout=1"), "batch_timeout"),
        ((f"ckpt={ckpt}", "max_queue=-1"), "max_queue"),
        ((f"ckpt={ckpt}", "api_key=''"), "api_key must be a non-empty string"),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append(((f"ckpt={ckpt}", f"port={busy.getsockname()[1]}"), "another server uses it"))
        for args, word in cases:
            assert_one_line_error(run_cli_here("serve", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path), word)


def test_every_interface_without_an_api_key_is_warned_about(monkeypatch):
    monkeypatch.delenv("LIT_SERVER_API_KEY", raising=False)
    assert exposure_warning({"host": "127.0.0.1", "api_key": None}) is None
    assert exposure_warning({"host": "0.0.0.0", "api_key": "k"}) is None
    assert "without an api_key" in exposure_warning({"host": "0.0.0.0", "api_key": None})
    assert "\n" not in exposure_warning({"host": "::", "api_key": None})
