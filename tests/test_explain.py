"""`vggtune explain`: Grad-CAM heatmaps at the image's size in [0, 1], per class; feature maps; bad inputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli_here
from PIL import Image
from torchvision.transforms import v2

from vggtune.inspect.gradcam import CropBox
from vggtune.model.arch import preprocessing

WIDTH, HEIGHT = 60, 40  # not square: the heatmap must come back at the image's own size


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt  # untrained (conftest): Grad-CAM explains whatever the network computes


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory):
    """A folder: a non-square image, a square one in a subfolder, a text file and a cut-off JPEG."""
    folder = tmp_path_factory.mktemp("inputs")
    source = sorted((tiny_data / "checks").glob("*.png"))[0]
    Image.open(source).convert("RGB").resize((WIDTH, HEIGHT)).save(folder / "wide.png")
    (folder / "sub").mkdir()
    Image.open(source).convert("RGB").save(folder / "sub" / "square.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")
    return folder


@pytest.fixture(scope="module")
def explain_run(ckpt, inputs, tmp_path_factory):
    """`vggtune explain` of the folder, top 2 classes, on block3 (8 x 8 cells at 32 px)."""
    work = tmp_path_factory.mktemp("explain")
    run_dir = work / "run"
    proc = run_cli_here(
        "explain",
        f"ckpt={ckpt}",
        f"input={inputs}",
        "top_k=2",
        "layer=block3",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_heatmaps_have_the_images_size_values_in_0_1_and_differ_by_class(explain_run):
    run_dir, _ = explain_run
    saved = np.load(run_dir / "wide" / "heatmaps.npz")
    heat = saved["heatmaps"].astype(np.float32)
    assert heat.shape == (2, HEIGHT, WIDTH)
    assert heat.min() >= 0 and heat.max() <= 1
    assert all(h.max() in (0.0, 1.0) for h in heat)  # each normalised by its own maximum
    assert not np.allclose(heat[0], heat[1], atol=1e-3)
    rows = [r for r in _csv(run_dir / "explain.csv") if r["image"].endswith("wide.png")]
    assert [r["class"] for r in rows] == list(saved["classes"])
    assert [int(r["rank"]) for r in rows] == [1, 2]
    assert [r["predicted"] for r in rows] == ["yes", "no"]  # one class per image: the top one
    assert float(rows[0]["probability"]) >= float(rows[1]["probability"])


def test_heatmap_is_zero_where_the_network_saw_nothing(explain_run):
    run_dir, _ = explain_run
    heat = np.load(run_dir / "wide" / "heatmaps.npz")["heatmaps"]
    box = CropBox.of((WIDTH, HEIGHT), preprocessing("vgg11", 32))
    assert box.width < WIDTH  # the centre crop cut the sides off
    assert (heat[:, :, : box.left] == 0).all() and (heat[:, :, box.left + box.width :] == 0).all()
    assert heat[:, :, box.left : box.left + box.width].max() > 0


def test_overlays_have_the_images_size_and_feature_maps_are_drawn(explain_run):
    run_dir, proc = explain_run
    rows = _csv(run_dir / "explain.csv")
    for r in rows:
        with Image.open(run_dir / r["overlay"]) as overlay, Image.open(r["image"]) as image:
            assert overlay.size == image.size
        assert r["class"] in proc.stdout
    for name in ("wide", "sub/square"):
        with Image.open(run_dir / name / "feature_maps.png") as im:
            assert im.format == "PNG" and im.size[0] > 500
    assert "explain.csv" in proc.stdout


@pytest.mark.parametrize("size", [(90, 60), (333, 500), (1000, 37)])
@pytest.mark.parametrize("crop", [32, 224])
def test_crop_box_is_where_resize_and_centre_crop_take_the_pixels_from(size, crop):
    prep = preprocessing("vgg16", crop)
    w, h = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    near = v2.InterpolationMode.NEAREST
    seen = v2.CenterCrop(prep.image_size)(v2.Resize(prep.resize_size, interpolation=near)(torch.stack([xs, ys])))
    box = CropBox.of(size, prep)
    step = max(w, h) / prep.resize_size + 1  # one resized pixel, in original pixels
    assert abs(seen[0].min().item() - box.left) <= step and abs(seen[1].min().item() - box.top) <= step
    assert abs(seen[0].max().item() + 1 - (box.left + box.width)) <= step
    assert abs(seen[1].max().item() + 1 - (box.top + box.height)) <= step


def test_a_folder_explains_every_image_and_reports_the_other_files(explain_run, inputs):
    run_dir, proc = explain_run
    rows = _csv(run_dir / "explain.csv")
    assert sorted({r["image"] for r in rows}) == [str(inputs / "sub" / "square.png"), str(inputs / "wide.png")]
    assert len(rows) == 4 and all((run_dir / r["overlay"]).is_file() for r in rows)
    output = proc.stdout + proc.stderr
    assert "broken.jpg: not a readable image" in output and "notes.txt: not an image file name" in output


def test_bad_inputs_give_one_line_each(ckpt, tmp_path, inputs):
    def explain(*args):
        return run_cli_here("explain", f"ckpt={ckpt}", *args, cwd=tmp_path)

    assert_one_line_error(explain(f"input={tmp_path / 'missing.jpg'}"), "missing.jpg", "does not exist")
    (tmp_path / "bad.jpg").write_bytes(b"this is not a JPEG")
    assert_one_line_error(explain(f"input={tmp_path / 'bad.jpg'}"), "bad.jpg", "not a readable image")
    err = assert_one_line_error(
        explain(f"input={inputs / 'wide.png'}", "layer=conv9"), "layer must be one of", "layer=conv9"
    )
    assert all(f"block{i}" in err for i in range(1, 6))
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
