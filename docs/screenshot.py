"""How docs/tensorboard.png and docs/tensorboard-images.png were taken (a developer tool, not part of vggtune).

Needs Debian's ``chromium`` and ``aiohttp``. Chromium's own ``--screenshot --virtual-time-budget``
captured the Time Series cards before they had drawn, so this drives headless Chromium through the
DevTools protocol and waits real seconds instead. Everything stays on 127.0.0.1::

    vggtune train experiment=demo
    tensorboard --logdir outputs --host 127.0.0.1 --port 6006 &
    python docs/screenshot.py http://127.0.0.1:6006 docs
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from PIL import Image

CHROMIUM = [
    "chromium",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Time Series filtered to the epoch curves and the two validation images; outliers not clipped.
TIMESERIES = (
    "/?smoothing=0&tagFilter=%5E(train%2Floss_epoch%7Cval%2Facc%7Cval%2Floss%7Cval%2Ff1"
    "%7Cval%2Fconfusion_matrix%7Cval%2Fpredictions)%24#timeseries"
)
SETTINGS = "localStorage.setItem('_tb_global_settings', JSON.stringify({ignoreOutliers: false})); location.reload()"
CLOSE_PANE = "document.querySelector('button[aria-label=\"Close side pane\"]')?.click()"
ACTUAL_SIZE = """(() => { const walk = r => r.querySelectorAll('*').forEach(e => {
    if (e.tagName === 'PAPER-CHECKBOX' && e.textContent.includes('actual')) e.click();
    if (e.shadowRoot) walk(e.shadowRoot); }); walk(document); })()"""
SHOTS = [
    ("tensorboard.png", TIMESERIES, (1500, 1000), [SETTINGS, CLOSE_PANE]),
    ("tensorboard-images.png", "/#images", (1850, 1180), [ACTUAL_SIZE]),
]


async def screenshot(
    devtools: str, url: str, out: Path, size: tuple[int, int], scripts: list[str], wait: float = 8.0
) -> None:
    """Open ``url`` in the page behind ``devtools``, run each script (waiting after each), save a PNG to ``out``."""
    async with aiohttp.ClientSession(trust_env=False) as session, session.ws_connect(devtools, max_msg_size=0) as ws:
        counter = iter(range(1, 10**6))

        async def call(method: str, **params):
            n = next(counter)
            await ws.send_json({"id": n, "method": method, "params": params})
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("id") == n:
                    return data.get("result", data)

        await call(
            "Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False
        )
        await call("Page.navigate", url=url)
        await asyncio.sleep(wait)
        for script in scripts:
            await call("Runtime.evaluate", expression=script)
            await asyncio.sleep(wait)
        shot = await call("Page.captureScreenshot", format="png")
        # 256 colours: a third of the size, and the page's flat colours survive.
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out, optimize=True)


def main(base: str, out_dir: str) -> None:
    """Take every shot in SHOTS of the TensorBoard at ``base`` into ``out_dir``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = tempfile.mkdtemp(prefix="chromium-")  # a new empty profile: no state from earlier runs
    proc = subprocess.Popen(
        [
            *CHROMIUM,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={port}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        for name, path, size, scripts in SHOTS:
            for _ in range(100):
                try:
                    targets = json.load(opener.open(f"http://127.0.0.1:{port}/json"))
                    break
                except OSError:
                    time.sleep(0.2)
            page = next(t for t in targets if t["type"] == "page")
            out = Path(out_dir) / name
            asyncio.run(screenshot(page["webSocketDebuggerUrl"], base + path, out, size, scripts))
            print(out)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), sys.argv[2])
