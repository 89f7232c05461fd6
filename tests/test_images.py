"""Every image mode decodes to 8-bit RGB with the right colours."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vggtune.data.images import list_images, load_rgb


def test_grayscale_palette_cmyk_become_rgb(tmp_path):
    Image.new("L", (4, 4), 128).save(tmp_path / "g.png")
    Image.new("RGB", (4, 4), (10, 200, 30)).convert("P").save(tmp_path / "p.gif")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    for name in ("g.png", "p.gif", "c.jpg"):
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB" and im.size == (4, 4)
    assert load_rgb(tmp_path / "g.png").getpixel((0, 0)) == (128, 128, 128)
    r, g, b = load_rgb(tmp_path / "c.jpg").getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_transparent_pixels_become_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    a[0, 0] = (255, 0, 0, 255)
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    im = load_rgb(tmp_path / "t.png")
    assert im.getpixel((1, 1)) == (255, 255, 255) and im.getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    a = np.full((4, 4), 32768, np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    value = load_rgb(tmp_path / "d.png").getpixel((0, 0))[0]
    assert 126 <= value <= 129


def test_list_images_is_recursive_sorted_and_skips_hidden(tmp_path):
    (tmp_path / "a" / ".cache").mkdir(parents=True)
    for rel in ("b.PNG", "a/c.jpeg", "a/.cache/d.jpg", ".e.jpg", "f.txt"):
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a/c.jpeg", "b.PNG"]
