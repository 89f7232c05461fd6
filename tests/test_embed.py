"""`vggtune embed`: one fc7 vector per image, the CSV, both maps, the projector files, the silhouette score."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_one_line_error, make_class_folders, run_cli_here
from PIL import Image
from sklearn.metrics import silhouette_score

from vggtune.data.images import load_rgb
from vggtune.data.transforms import eval_transform
from vggtune.model.arch import Preprocessing, preprocessing
from vggtune.model.checkpoint import model_from_checkpoint
from vggtune.use.inference import load_pretrained


@pytest.fixture(scope="module")
def embed_run(tiny_run, tiny_data, tmp_path_factory):
    """`vggtune embed` of the tiny data set with the tiny run's checkpoint: (run folder, process)."""
    work = tmp_path_factory.mktemp("embed")
    run_dir = work / "run"
    proc = run_cli_here(
        "embed",
        f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}",
        f"data.root={tiny_data}",
        "data.num_workers=0",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def _head_input_width(run) -> int:
    """What the last layer reads: 512 with the default pooled head, 4096 (fc7) with model.head=vgg."""
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    return state["model.classifier.6.weight"].shape[1]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


@pytest.mark.slow
def test_one_fc7_vector_and_one_csv_row_per_image(embed_run, tiny_run, tiny_data):
    run_dir, _ = embed_run
    vectors = np.load(run_dir / "embeddings.npy")
    rows = _rows(run_dir / "embeddings.csv")
    images = sorted(p.relative_to(tiny_data).as_posix() for p in tiny_data.rglob("*.*"))
    assert vectors.shape == (len(images), _head_input_width(tiny_run)) and vectors.dtype == np.float32
    assert sorted(r["path"] for r in rows) == images
    assert all(r["class"] == r["path"].split("/")[0] for r in rows)
    assert np.isfinite(vectors).all()
    # the default pooled head's vector is taken after its BatchNorm: both signs (fc7's, after a ReLU, is not)
    assert (vectors < 0).any() and (vectors > 0).any()


@pytest.mark.slow
def test_vectors_and_predictions_are_the_checkpoints_fc7_and_argmax(embed_run, tiny_run, tiny_data):
    run_dir, _ = embed_run
    vectors = np.load(run_dir / "embeddings.npy")
    rows = _rows(run_dir / "embeddings.csv")
    module = model_from_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    transform = eval_transform(Preprocessing.from_dict(module.hparams["preprocessing"]))
    seen = {}
    module.model.classifier[4].register_forward_hook(lambda m, i, out: seen.update(fc7=out.clone()))
    for k in (0, len(rows) - 1):
        with torch.no_grad():
            logits = module.model(transform(load_rgb(tiny_data / rows[k]["path"]))[None])
        np.testing.assert_allclose(vectors[k], seen["fc7"][0].numpy(), rtol=1e-4, atol=1e-5)
        assert rows[k]["predicted"] == module.class_names[int(logits.argmax())]


@pytest.mark.slow
def test_both_maps_and_the_projector_files(embed_run, tiny_run):
    run_dir, _ = embed_run
    n = len(np.load(run_dir / "embeddings.npy"))
    for name in ("pca.png", "tsne.png"):
        with Image.open(run_dir / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
    projector = run_dir / "projector"
    assert "embeddings" in (projector / "projector_config.pbtxt").read_text()
    tensors = list(projector.rglob("tensors.tsv"))
    assert len(tensors) == 1
    lines = tensors[0].read_text().splitlines()
    assert len(lines) == n and all(len(line.split("\t")) == _head_input_width(tiny_run) for line in lines)
    metadata = _rows(tensors[0].with_name("metadata.tsv"))
    csv_rows = _rows(run_dir / "embeddings.csv")
    assert [(m["class"], m["predicted"], m["path"]) for m in metadata] == [
        (r["class"], r["predicted"], r["path"]) for r in csv_rows
    ]
    with Image.open(tensors[0].with_name("sprite.png")) as sprite:
        assert sprite.size[0] > 0


@pytest.mark.slow
def test_silhouette_by_class_is_printed_and_saved(embed_run):
    run_dir, proc = embed_run
    summary = json.loads((run_dir / "embed.json").read_text())
    vectors = np.load(run_dir / "embeddings.npy")
    labels = [r["class"] for r in _rows(run_dir / "embeddings.csv")]
    assert summary["silhouette"] == pytest.approx(silhouette_score(vectors, labels), abs=1e-5)
    assert f"Silhouette score by class: {summary['silhouette']:.3f}" in proc.stdout
    assert str(run_dir / "embeddings.npy").split("/")[-1] in proc.stdout


def test_without_checkpoint_embeds_with_the_imagenet_network(tmp_path):
    data = make_class_folders(tmp_path / "few", classes=2, per_class=3)  # 6 images: t-SNE's perplexity must drop
    run_dir = tmp_path / "run"
    proc = run_cli_here(
        "embed",
        f"data.root={data}",
        "model=vgg11",
        "model.weights=none",
        "data.image_size=32",
        "data.num_workers=0",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(run_dir / "embeddings.npy").shape == (6, 4096)
    assert (run_dir / "pca.png").is_file() and (run_dir / "tsne.png").is_file()
    assert json.loads((run_dir / "embed.json").read_text())["tsne_perplexity"] < 6
    categories = set(torchvision.models.VGG11_Weights.IMAGENET1K_V1.meta["categories"])
    assert {r["predicted"] for r in _rows(run_dir / "embeddings.csv")} <= categories


@pytest.mark.slow
def test_pretrained_network_keeps_the_weights_files_head(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg11().eval()
    torch.save(reference.state_dict(), tmp_path / "vgg11.pth")
    net = load_pretrained("vgg11", str(tmp_path / "vgg11.pth"), image_size=32, device="cpu")
    assert net.class_names == torchvision.models.VGG11_Weights.IMAGENET1K_V1.meta["categories"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.module.model(x), reference(x), atol=1e-5)


def test_missing_data_folder_gives_one_line(tmp_path):
    err = assert_one_line_error(run_cli_here("embed", cwd=tmp_path), "data.root")
    assert "experiment=demo" not in err  # that hint is for train


@pytest.mark.slow
def test_embed_over_a_stream_gives_its_files_vectors_and_a_size_it_does_not_hold_is_one_line(
    embed_run, tiny_run, tiny_data, tmp_path
):
    ckpt = f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}"
    for size in (32, 48):  # the tiny run's size, and one whose squares the checkpoint's crops cannot be cut from
        proc = run_cli_here(
            "prepare",
            f"data.root={tiny_data}",
            f"output={tmp_path / f'shards{size}'}",
            "model=vgg11",
            f"data.image_size={size}",
            f"hydra.run.dir={tmp_path / f'p{size}'}",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    proc = run_cli_here(
        "embed",
        ckpt,
        f"data.stream={tmp_path / 'shards32'}",
        "data.batch_size=4",
        "data.num_workers=2",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files_dir, _ = embed_run  # every file of the data set, embedded from the files themselves
    by_path = {r["path"]: (k, r) for k, r in enumerate(_rows(files_dir / "embeddings.csv"))}
    streamed, files = np.load(run_dir / "embeddings.npy"), np.load(files_dir / "embeddings.npy")
    rows = _rows(run_dir / "embeddings.csv")
    assert sorted(r["path"] for r in rows) == sorted(by_path) and len(streamed) == len(rows)
    for k, row in enumerate(rows):  # every subset of the stream, each image once, with its class and prediction
        j, same = by_path[row["path"]]
        assert (row["class"], row["predicted"]) == (same["class"], same["predicted"])
        np.testing.assert_allclose(streamed[k], files[j], rtol=1e-4, atol=1e-4)
    summary = json.loads((run_dir / "embed.json").read_text())
    assert summary["data_stream"] == str(tmp_path / "shards32") and summary["images"] == len(rows)
    # Without a checkpoint: torchvision's network at the size the stream was prepared for (48, not 224).
    proc = run_cli_here(
        "embed",
        f"data.stream={tmp_path / 'shards48'}",
        "model=vgg11",
        "model.weights=none",
        "data.num_workers=0",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'w48'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(tmp_path / "w48" / "embeddings.npy").shape == (len(rows), 4096)
    proc = run_cli_here(
        "embed", ckpt, f"data.stream={tmp_path / 'shards48'}", f"hydra.run.dir={tmp_path / 'r48'}", cwd=tmp_path
    )
    squares, needed = (preprocessing("vgg11", size).resize_size for size in (48, 32))
    assert_one_line_error(
        proc,
        f"holds {squares} px squares",
        f"needs {needed} px",
        "prepare the stream again with model=vgg11 data.image_size=32",
    )
    assert not (tmp_path / "r48" / "embeddings.npy").exists()
