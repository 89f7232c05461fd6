"""How docs/serve-page.png was taken (a developer tool, not part of vggtune).

Needs Debian's ``chromium`` and ``playwright`` (in ``[dev]``). Everything stays on 127.0.0.1::

    vggtune train experiment=demo
    vggtune serve ckpt=outputs/train/<demo run>/checkpoints/best.ckpt port=8000 &
    python docs/serve_screenshot.py http://127.0.0.1:8000 <an image> docs/serve-page.png
"""

from __future__ import annotations

import shutil
import sys

from playwright.sync_api import sync_playwright


def main(url: str, image: str, out: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
        page.fill("#topk", "5")
        page.check("#explain")
        page.set_input_files("#file", image)
        page.wait_for_selector("body[data-state=done]", timeout=120_000)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
