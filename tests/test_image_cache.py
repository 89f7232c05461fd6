"""The pre-resized image cache and its on-device crop: the same pixels as the PIL path where it promises so."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from conftest import make_class_folders
from vggtune.core.errors import UserError
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
    return ClassFolderDataModule(data, val_split=0.4, test_split=0.0, image_size=32, batch_size=4, num_workers=0,
                                 arch="vgg11", cache_dir=str(cache_dir), **kw)


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
    images, labels, boxes, flips = next(iter(DataLoader(ds, batch_size=4)))
    boxes = torch.tensor([[2.0, 3.0, 22.0, 23.0]] * 4)  # 20 px crops upscaled to 32: one sample per pixel
    x, _ = device_transform((images, labels, boxes, flips), prep, train=True)
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
