"""The pre-resized image cache and its on-device crop: the same pixels as the PIL path where it promises so."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import make_class_folders
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from vggtune.core.errors import UserError
from vggtune.data import image_cache
from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.data.image_cache import CachedImageDataset, build_cache, device_transform
from vggtune.data.images import load_rgb
from vggtune.data.transforms import eval_transform
from vggtune.model.arch import preprocessing
from vggtune.model.module import VGGClassifier


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("ic") / "d", classes=2, per_class=5, size=50)


def _dm(data, cache_dir, **kw):
    return ClassFolderDataModule(
        data,
        val_split=0.4,
        test_split=0.0,
        image_size=32,
        batch_size=4,
        num_workers=0,
        arch="vgg11",
        cache_dir=str(cache_dir),
        **kw,
    )


def test_evaluation_batches_are_the_pil_paths_pixels(data, tmp_path):
    prep = preprocessing("vgg11", 32)
    paths = sorted(data.rglob("img_*"))
    cache = build_cache(paths, prep, tmp_path)
    ds = CachedImageDataset(cache, [0] * len(paths), prep.resize_size, train=False)
    x, _ = device_transform(next(iter(DataLoader(ds, batch_size=len(paths)))), prep, train=False)
    expected = torch.stack([eval_transform(prep)(load_rgb(p)) for p in paths])
    assert torch.allclose(x, expected, atol=1e-5)


def test_a_training_crop_is_a_bilinear_resized_crop_of_the_square(data, tmp_path):
    prep = preprocessing("vgg11", 32)
    paths = sorted(data.rglob("img_*"))[:4]
    ds = CachedImageDataset(build_cache(paths, prep, tmp_path), [0, 1, 0, 1], prep.resize_size, train=True, seed=3)
    images, labels, boxes, flips, looks = next(iter(DataLoader(ds, batch_size=4)))
    boxes = torch.tensor([[2.0, 3.0, 22.0, 23.0]] * 4)  # 20 px crops upscaled to 32: one sample per pixel
    x, _ = device_transform((images, labels, boxes, flips, looks), prep, train=True)
    square = images.permute(0, 3, 1, 2).float()
    ref = F.resized_crop(square, 3, 2, 20, 20, [32, 32], antialias=False)
    ref = torch.where(flips.view(-1, 1, 1, 1), ref.flip(-1), ref)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (prep.mean, prep.std))
    # The outermost pixels differ: resized_crop clamps at the crop's edge, roi_align reads the
    # real neighbours outside it.
    inner = (..., slice(1, -1), slice(1, -1))
    assert torch.allclose(x[inner], ((ref - mean) / std)[inner], atol=1e-3)


def test_crops_depend_on_seed_epoch_and_item_only(data, tmp_path):
    prep = preprocessing("vgg11", 32)
    paths = sorted(data.rglob("img_*"))
    ds = CachedImageDataset(build_cache(paths, prep, tmp_path), [0] * len(paths), prep.resize_size, True, seed=5)

    def crops():
        return [(ds[i][2].tolist(), ds[i][3]) for i in range(len(ds))]

    first = crops()
    assert crops() == first
    ds.set_epoch(1)
    assert crops() != first
    ds.set_epoch(0)
    assert crops() == first


def test_validation_through_the_cache_equals_validation_through_pil(data, tmp_path):
    plain, cached = _dm(data, tmp_path), _dm(data, tmp_path, cache_images=True)
    cached.use_image_cache()
    torch.manual_seed(0)
    module = VGGClassifier("vgg11", plain.class_names, weights="none", preprocessing=plain.preprocessing.to_dict())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    a = trainer.validate(module, datamodule=plain, verbose=False)[0]
    b = trainer.validate(module, datamodule=cached, verbose=False)[0]
    assert a["val/loss"] == pytest.approx(b["val/loss"], abs=1e-5) and a["val/acc"] == b["val/acc"]


def test_strong_augmentation_is_refused_with_the_image_cache(data, tmp_path):
    with pytest.raises(UserError, match="data.augment"):
        _dm(data, tmp_path, cache_images=True, augment="strong").use_image_cache()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_the_gpu_crop_gives_the_cpu_crops_tensors(data, tmp_path):
    prep = preprocessing("vgg11", 32)
    paths = sorted(data.rglob("img_*"))
    ds = CachedImageDataset(build_cache(paths, prep, tmp_path), [0] * len(paths), prep.resize_size, True, seed=1)
    batch = next(iter(DataLoader(ds, batch_size=len(paths))))
    cpu, _ = device_transform(batch, prep, train=True)
    gpu, _ = device_transform([t.cuda() for t in batch], prep, train=True)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-3)


def _squares(paths: list[Path], size: int) -> np.ndarray:
    """Each image's centre square as the evaluation transform makes it (torchvision's functional resize of
    the short side, then a centre crop), computed here without the cache's code."""
    return np.stack([np.asarray(F.center_crop(F.resize(load_rgb(p), [size]), [size])) for p in paths])


def _read(path: Path, n: int, size: int) -> np.ndarray:
    return np.fromfile(path, np.uint8).reshape(n, size, size, 3)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def odd_images(data, tmp_path_factory):
    """The module's images and some that are not square, not RGB, or transparent."""
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "wide.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 41, 4), dtype=np.uint8), "RGBA").save(folder / "tall_alpha.png")
    Image.fromarray(rng.integers(0, 255, (45, 50), dtype=np.uint8), "L").save(folder / "grey.png")
    return sorted(data.rglob("img_*")) + sorted(folder.iterdir())


@pytest.mark.parametrize("workers, pool", [(2, "process"), (2, "thread"), (1, "process")])
def test_the_file_holds_each_images_centre_square(odd_images, tmp_path, workers, pool):
    prep = preprocessing("vgg11", 32)
    size = prep.resize_size
    # Jobs of 3 images: several chunks, written at their own offsets by different workers.
    path = build_cache(odd_images, prep, tmp_path, workers=workers, pool=pool, chunk_bytes=3 * size * size * 3)
    assert np.array_equal(_read(path, len(odd_images), size), _squares(odd_images, size))
    assert _leftovers(tmp_path) == [path.name]


def test_a_file_that_fails_to_decode_stops_the_build_with_one_line_naming_it(data, tmp_path):
    bad = tmp_path / "src" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    paths = sorted(data.rglob("img_*"))
    paths.insert(5, bad)
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as err:
        build_cache(paths, preprocessing("vgg11", 32), cache, workers=2, chunk_bytes=1)
    message = str(err.value)
    assert str(bad) in message and "\n" not in message and "data.verify=full" in message
    assert _leftovers(cache) == []  # neither the cache nor its temporary file


def _children(pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # a thread that just ended
            pass
    return pids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _build_and_hang_at(paths, prep, cache, k, reached):
    real = image_cache.load_rgb
    seen = []

    def load(p):
        if len(seen) == k:
            reached.set()
            time.sleep(60)  # killed here
        seen.append(p)
        return real(p)

    image_cache.load_rgb = load  # in this process and in the workers it forks
    build_cache(paths, prep, cache, workers=2, chunk_bytes=2 * prep.resize_size**2 * 3)


def test_a_build_killed_part_way_leaves_no_cache_and_the_next_build_makes_the_whole_one(data, tmp_path):
    prep = preprocessing("vgg11", 32)
    paths = sorted(data.rglob("img_*"))
    fork = multiprocessing.get_context("fork")  # this process's imports, without importing torch again
    reached = fork.Event()
    child = fork.Process(target=_build_and_hang_at, args=(paths, prep, tmp_path, 3, reached))
    child.start()
    assert reached.wait(30), "no worker got to its image 3"
    workers = _children(child.pid)
    assert len(workers) == 2
    os.kill(child.pid, signal.SIGKILL)  # the builder; its workers are left without a parent
    child.join()
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].endswith(".tmp"), left  # what the killed build left: no cache
    deadline = time.monotonic() + 20
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(w) for w in workers), "the killed build's workers outlived it"
    path = build_cache(paths, prep, tmp_path, workers=2)
    assert _leftovers(tmp_path) == [path.name]  # the partial file was removed
    assert np.array_equal(_read(path, len(paths), prep.resize_size), _squares(paths, prep.resize_size))


def test_callers_at_the_same_time_decode_once_and_read_the_same_file(data, tmp_path, caplog):
    prep = preprocessing("vgg11", 32)
    paths = sorted(data.rglob("img_*")) * 30  # long enough to overlap
    start, results = threading.Barrier(3), []

    def call():
        start.wait()
        results.append(build_cache(paths, prep, tmp_path, workers=1))

    with caplog.at_level(logging.INFO, logger="vggtune.data.image_cache"):
        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(set(results)) == 1 and len(results) == 3
    assert caplog.text.count("decoding and resizing") == 1, caplog.text
    assert caplog.text.count("built by another process meanwhile") == 2, caplog.text


def _this_process_and_children() -> list[int]:
    return sorted([os.getpid(), *_children(os.getpid())])


def _pss_of_this_process_tree() -> int | None:
    """Proportional set size of this process and its children (shared pages counted once), in bytes; None
    when a worker started or ended meanwhile (its shared pages could count twice)."""
    pids, total = _this_process_and_children(), 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # the worker just ended
            continue
        total += int(next(line for line in rollup.splitlines() if line.startswith("Pss:")).split()[1]) * 1024
    return total if _this_process_and_children() == pids else None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc/PID/smaps_rollup")
def test_building_a_cache_larger_than_a_chunk_keeps_memory_to_a_few_chunks(data, tmp_path):
    paths = sorted(data.rglob("img_*")) * 250  # 2,500 entries (the same files: decoding is what is measured)
    prep = preprocessing("vgg11", 154)  # 176 px squares: a 232 MB array; jobs of 4 MB
    array_bytes = len(paths) * prep.resize_size**2 * 3
    assert array_bytes > 200e6
    base, peak, done = _pss_of_this_process_tree(), [0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], _pss_of_this_process_tree() or 0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        path = build_cache(paths, prep, tmp_path, workers=2, chunk_bytes=4 << 20)
    finally:
        done.set()
        sampler.join()
    assert path.stat().st_size == array_bytes
    growth = peak[0] - base
    print(f"memory growth {growth / 1e6:.0f} MB, array {array_bytes / 1e6:.0f} MB")
    assert growth < array_bytes / 4, (
        f"the build grew memory by {growth / 1e6:.0f} MB for a {array_bytes / 1e6:.0f} MB array"
    )
    first, last = _read(path, len(paths), prep.resize_size)[[0, -1]]
    assert np.array_equal(np.stack([first, last]), _squares([paths[0], paths[-1]], prep.resize_size))


def test_the_datamodule_builds_in_prepare_data_and_the_other_ranks_open_it_in_setup(data, tmp_path, caplog):
    dm = _dm(data, tmp_path, cache_images=True, cache_workers=1)
    dm.use_image_cache()
    files = [ds.path for ds in dm.datasets.values()]
    assert len(files) == 2 and not any(f.exists() for f in files)  # train and val, neither built yet
    dm.prepare_data()  # what Lightning runs on each node's local rank 0 only
    assert all(f.is_file() for f in files)
    other = _dm(data, tmp_path, cache_images=True, cache_workers=1)  # another rank of the node
    other.use_image_cache()
    with caplog.at_level(logging.INFO, logger="vggtune.data.image_cache"):
        other.setup("fit")
        other.setup("test")
    assert caplog.text.count("read from the cache") == 2 and "decoding" not in caplog.text, caplog.text
    assert [ds.path for ds in other.datasets.values()] == files


def test_a_long_build_logs_its_progress_every_5_percent_at_most_every_10_seconds(caplog):
    now = [0.0]
    progress = image_cache._Progress(1000, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="vggtune.data.image_cache"):
        for _ in range(100):  # 10 images a 1 s step
            now[0] += 1
            progress.add(10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 9 and lines[0].startswith("Images: 100/1000 cached (10%)"), lines  # at 10 s, 20 s, ...
    assert "10 images/s, about 90 s left" in lines[0]


@pytest.mark.parametrize("value", [0, -1, "many", 1.5])
def test_a_bad_cache_workers_value_names_the_key(data, tmp_path, value):
    with pytest.raises(UserError, match="data.cache_workers"):
        _dm(data, tmp_path, cache_images=True, cache_workers=value)
