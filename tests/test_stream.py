"""Streaming from litdata shards: ``vggtune prepare``, ``train data.stream=`` (a folder, and S3 on the loopback),
its resume after kill -9, and eval over a stream."""

from __future__ import annotations

import io
import json
import signal

import numpy as np
import pytest
import torch
from conftest import TINY, assert_one_line_error, make_class_folders, run_cli, run_cli_here
from PIL import Image
from test_faults import _assert_same_run, _start, _wait_for

from vggtune.data.augment import Augment, LookDrawer, identity_look
from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.data.image_cache import CachedImageDataset, _square, build_cache
from vggtune.data.images import load_rgb
from vggtune.model.arch import preprocessing

pytest.importorskip("litdata")
from vggtune.data.stream import Stream, StreamLoader  # noqa: E402

SMALL = ["model=vgg11", "data.image_size=32", "seed=7"]
# Two epochs of three steps (10 training images, batches of 4), seeded crops and flips, deterministic.
RUN = [a for a in TINY if not a.startswith(("trainer.max_epochs", "data.batch_size"))] + [
    *SMALL[1:],
    "trainer.max_epochs=2",
    "data.batch_size=4",
    "trainer.deterministic=true",
    "data.augment=light",
    "callbacks.best_checkpoint=null",
    "logger.images_every_n_epochs=0",
    "test_after_fit=false",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("stream") / "d", classes=2, per_class=8, size=44)
    (root / "checks" / "broken.png").write_text("not a picture\n")  # found by data.verify=header, left out
    return root


@pytest.fixture(scope="module")
def stream(tmp_path_factory, data):
    work = tmp_path_factory.mktemp("prepare")
    proc = run_cli_here(
        "prepare", f"data.root={data}", f"output={work / 'shards'}", *SMALL, f"hydra.run.dir={work / 'run'}", cwd=work
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "images/s" in proc.stdout + proc.stderr and "MB on disk" in proc.stdout + proc.stderr
    return work


def test_prepare_writes_the_split_train_makes_as_squares_of_the_resize_size(stream, data):
    info = json.loads((stream / "shards" / "vggtune_stream.json").read_text())
    dm = ClassFolderDataModule(str(data), seed=7, image_size=32, arch="vgg11", batch_size=1)
    expected = dm.split
    assert info["classes"] == expected.classes and info["preprocessing"]["resize_size"] == 37
    prep = preprocessing("vgg11", 32)
    for subset, items in expected.subsets.items():
        files = info["subsets"][subset]["files"]
        assert [(data / p, expected.classes.index(c)) for _, p, c in files] == items
        shards = Stream(str(stream / "shards")).dataset(subset, shuffle=False, augment=False, seed=7)
        assert len(shards) == len(items)
    # The pixels are the image cache's: the centre square of the resize size, uint8.
    shards = Stream(str(stream / "shards")).dataset("train", shuffle=False, augment=False, seed=7)
    for i in range(len(shards)):
        image, label, box, flip, look = shards[i]
        path, want = expected.subsets["train"][i]
        assert label == want and not flip and box.tolist() == [0, 0, 37, 37] and torch.equal(look, identity_look())
        assert torch.equal(image, torch.from_numpy(np.array(_square(prep.resize_size)(load_rgb(path)))))
    assert [p.rsplit("/", 1)[-1] for p, _ in info["skipped"]] == ["broken.png"]
    assert "broken.png" in (stream / "run" / "skipped_images.txt").read_text()
    assert info["counts"] == expected.counts()


def test_jpeg_shards_hold_the_squares_as_jpegs_and_an_undecodable_file_is_listed(tmp_path):
    data = make_class_folders(tmp_path / "d", classes=2, per_class=5, size=44)
    good = (data / "checks" / "img_001.jpg").read_bytes()
    (data / "checks" / "cut.jpg").write_bytes(good[:-200])  # passes data.verify=files, fails to decode
    proc = run_cli_here(
        "prepare",
        f"data.root={data}",
        f"output={tmp_path / 's'}",
        "format=jpeg",
        "quality=95",
        "data.verify=files",
        "data.test_split=0",
        *SMALL,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "s" / "vggtune_stream.json").read_text())
    assert info["image_format"] == "jpeg" and [p.rsplit("/", 1)[-1] for p, _ in info["skipped"]] == ["cut.jpg"]
    assert "cut.jpg" in (tmp_path / "run" / "skipped_images.txt").read_text()
    assert all("cut.jpg" not in path for entry in info["subsets"].values() for _, path, _ in entry["files"])
    prep, source = preprocessing("vgg11", 32), Stream(str(tmp_path / "s"))
    shards, files = source.dataset("train", shuffle=False, augment=False, seed=7), info["subsets"]["train"]["files"]
    assert len(shards) == len(files)
    for i in range(len(shards)):
        image, label, *_ = shards[i]  # box, flip, look: the augmentation's draws
        buffer = io.BytesIO()  # the square, JPEG-encoded at that quality and decoded by PIL itself
        _square(prep.resize_size)(load_rgb(data / files[i][1])).save(buffer, format="JPEG", quality=95)
        assert label == info["classes"].index(files[i][2])
        assert torch.equal(image, torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))))


def test_training_crops_flips_and_looks_are_the_image_caches(stream, data, tmp_path):
    prep = preprocessing("vgg11", 32)
    look = LookDrawer(Augment(rotate=10, zoom=1.1, warp=0.2, brightness=0.2, contrast=0.2), prep.image_size)
    shards = Stream(str(stream / "shards")).dataset(
        "train", shuffle=True, augment=True, seed=7, crop_scale=0.35, look=look
    )
    items = ClassFolderDataModule(str(data), seed=7, image_size=32, arch="vgg11", batch_size=1).split.subsets["train"]
    cached = CachedImageDataset(
        build_cache([p for p, _ in items], prep, tmp_path),
        [c for _, c in items],
        37,
        train=True,
        seed=7,
        crop_scale=0.35,
        look=look,
    )
    files = {
        path: i
        for i, (_, path, _) in enumerate(
            json.loads((stream / "shards" / "vggtune_stream.json").read_text())["subsets"]["train"]["files"]
        )
    }
    assert len(files) == len(items)
    seen = []
    moved = 0
    for image, label, box, flip, drawn in shards:  # one pass: litdata's epoch 1, the cache's epoch 0
        index = next(i for i in range(len(cached)) if torch.equal(cached[i][0], image))
        c_image, c_label, c_box, c_flip, c_drawn = cached[index]
        assert (label, box.tolist(), flip, drawn.tolist()) == (c_label, c_box.tolist(), c_flip, c_drawn.tolist())
        moved += not torch.equal(drawn, identity_look())
        seen.append(index)
    assert moved > 0  # the rotation, warp and lighting were drawn, not left off
    assert sorted(seen) == list(range(len(items))) and seen != sorted(seen)  # all of them, shuffled


def test_a_resumed_loader_goes_on_where_the_position_says(stream):
    def loader():
        ds = Stream(str(stream / "shards")).dataset("train", shuffle=True, augment=True, seed=7)
        return StreamLoader(ds, batch_size=2, num_workers=2)

    whole = loader()
    whole.start_epoch(1)  # the run's second epoch
    it = iter(whole)
    first = [next(it) for _ in range(2)]
    state = whole.position(2)
    rest = list(it)
    resumed = loader()
    resumed.resume_from(state)
    again = list(resumed)
    assert len(first) + len(rest) == 5 and len(again) == len(rest)
    for a, b in zip(again, rest):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3-compatible server on the loopback, with a bucket; the environment a user would set for it."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "vggtune",
        "AWS_SECRET_ACCESS_KEY": "not-a-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="shards")
    try:
        yield env, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def whole(tmp_path_factory, data, s3_server):
    """``vggtune prepare`` to S3, then an uninterrupted run streaming from it: the run that the local
    stream's kill -9 and resume must equal (so S3 and the local folder give the same training too)."""
    env, _ = s3_server
    work, url = tmp_path_factory.mktemp("whole"), "s3://shards/flowers/v1"
    proc = run_cli_here(
        "prepare", f"data.root={data}", f"output={url}", *SMALL, f"hydra.run.dir={work / 'p'}", cwd=work, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli_here(
        "train",
        f"data.stream={url}",
        *RUN,
        f"data.cache_dir={work / 'cache'}",
        f"hydra.run.dir={work / 'run'}",
        cwd=work,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "run"


@pytest.mark.slow
def test_s3_and_a_kill_9_resumed_local_run_train_as_one_uninterrupted_run(tmp_path, stream, whole, s3_server):
    # One test, so that xdist builds the S3 run once. What prepare wrote to S3, and what train read:
    env, client = s3_server
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="shards", Prefix="flowers/v1/")["Contents"]}
    assert "flowers/v1/vggtune_stream.json" in keys and "flowers/v1/train/index.json" in keys
    assert any(k.startswith("flowers/v1/train/chunk-") for k in keys)
    assert any((whole.parent / "cache" / "stream").rglob("chunk-*.bin"))  # downloaded into the run's own cache
    assert json.loads((whole / "metrics.json").read_text())["data"]["layout"] == "stream s3://shards/flowers/v1"
    proc = run_cli_here("train", "data.stream=s3://shards/nothing", *RUN, cwd=tmp_path, env=env)
    assert_one_line_error(proc, "data.stream s3://shards/nothing is not a prepared stream")
    # The local stream's run, killed after its first epoch and resumed, ends as the S3 run did.
    killed = tmp_path / "killed"
    child = _start(tmp_path, f"data.stream={stream / 'shards'}", *RUN, f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.ckpt"
    _wait_for(last.exists)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] == 0
    proc = run_cli_here("train", f"resume={killed}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(killed, whole)


def test_a_folder_that_is_not_a_stream_and_a_size_that_does_not_fit(tmp_path, stream, data):
    proc = run_cli_here("train", f"data.stream={data}", *TINY, cwd=tmp_path)
    assert_one_line_error(proc, f"data.stream {data} is not a prepared stream", "vggtune prepare")
    proc = run_cli_here(
        "train",
        f"data.stream={stream / 'shards'}",
        *[a for a in TINY if "image_size" not in a],
        "data.image_size=64",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "holds 37 px squares", "data.image_size=32")
    proc = run_cli_here("prepare", f"data.root={data}", f"output={stream / 'shards'}", *SMALL, cwd=tmp_path)
    assert_one_line_error(proc, "already holds files")
    proc = run_cli_here("prepare", f"data.root={data}", f"output={tmp_path / 'x'}", "format=png", cwd=tmp_path)
    assert_one_line_error(proc, "format must be one of uint8, jpeg", "format=png")


@pytest.mark.slow
def test_eval_over_a_streams_test_subset_equals_eval_over_its_files(tmp_path, tiny_data, tiny_run):
    # The stream of the tiny run's own data, split as it was (the same keys): its test subset is the run's.
    proc = run_cli_here(
        "prepare",
        f"data.root={tiny_data}",
        f"output={tmp_path / 'shards'}",
        "model=vgg11",
        "data.image_size=32",
        f"hydra.run.dir={tmp_path / 'p'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}"
    a, b = tmp_path / "files", tmp_path / "stream"
    proc = run_cli_here("eval", ckpt, "data.subset=test", "data.num_workers=0", f"hydra.run.dir={a}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli_here(
        "eval",
        ckpt,
        f"data.stream={tmp_path / 'shards'}",
        "data.subset=test",
        "data.num_workers=2",
        "data.batch_size=1",
        f"hydra.run.dir={b}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files, streamed = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert streamed["data"]["images"] == files["data"]["images"] == 3
    assert streamed["metrics"] == pytest.approx(files["metrics"], abs=1e-5)
    assert streamed["per_class"] == files["per_class"]
    assert (a / "misclassified.csv").read_text() == (b / "misclassified.csv").read_text()


def _steps(run) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_a_last_batch_of_one_image_sits_out_as_it_does_from_files(tmp_path, stream):
    # 10 training images in batches of 3: three steps; the tenth image would be a batch that the default
    # head's BatchNorm cannot train on ("Expected more than 1 value per channel"), so it sits out the epoch.
    run = tmp_path / "run"
    args = [a for a in RUN if not a.startswith(("trainer.max_epochs", "data.batch_size"))]
    proc = run_cli_here(
        "train",
        f"data.stream={stream / 'shards'}",
        *args,
        "trainer.max_epochs=1",
        "data.batch_size=3",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(run) == 3


@pytest.mark.slow
def test_ddp_ranks_split_the_stream_and_keep_identical_replicas(tmp_path, stream):
    # Two ranks (gloo on the CPU): each streams its half of the 10 training images, 5 in batches of 2, and
    # litdata drops the partial last batch (the ranks must take as many steps): 2 steps, not the 5 of one process.
    args = [a for a in RUN if not a.startswith(("trainer=", "trainer.max_epochs", "data.batch_size"))]
    proc = run_cli(
        "train",
        f"data.stream={stream / 'shards'}",
        *args,
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "data.batch_size=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = (tmp_path / "outputs" / "train").iterdir()
    assert _steps(run) == 2
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["replicas"]["world_size"] == 2 and summary["replicas"]["identical"], summary["replicas"]
    assert summary["data"]["layout"] == f"stream {stream / 'shards'}"
