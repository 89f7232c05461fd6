"""``vggtune.use.stream_eval`` in this process: the evaluation of a prepared stream's subset, over a stand-in for
the stream (its description and its subset's stored squares, in memory, in a shuffled order) read by a plain
torch DataLoader. Writing real litdata shards starts a process (litdata's ``optimize``); tests/test_stream.py
evaluates a real stream against the same images from files (slow)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from vggtune.core.errors import UserError
from vggtune.data.transforms import tta_transform
from vggtune.use import stream_eval
from vggtune.use.inference import load_model


class FakeStream:
    """What ``vggtune.data.stream.Stream`` offers ``predict_stream``: its info, split, size check and subsets."""

    made: list = []

    def __init__(self, url, storage_options=None, classes=None, squares=None):
        self.url, self.storage_options = url, storage_options
        self.classes, self.squares = classes, squares  # subset -> [(uint8 HWC square, class index)]
        self.info = {
            "classes": classes,
            "subsets": {
                s: {"files": [[i, f"{s}/{i}.png", classes[c]] for i, (_, c) in enumerate(items)]}
                for s, items in squares.items()
            },
        }
        self.fits = []
        FakeStream.made.append(self)

    def check_fits(self, prep, arch, checkpoint=False):
        self.fits.append((prep.resize_size, arch, checkpoint))

    def split(self):
        return SimpleNamespace(
            subsets={s: [(f"{s}/{i}.png", c) for i, (_, c) in enumerate(v)] for s, v in self.squares.items()}
        )

    def dataset(self, subset, shuffle, augment, seed, with_index=False):
        assert (shuffle, augment, with_index) == (False, False, True)
        items = self.squares[subset]
        order = [3, 0, 4, 1, 2][: len(items)]  # not the subset's order: the positions must put it right
        return [(items[i][0], items[i][1], (0, 0, 1, 1), False, i) for i in order]


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_model(tiny_ckpt, "cpu")


def _stream(monkeypatch, model, classes=None):
    size = model.preprocessing.resize_size
    gen = torch.Generator().manual_seed(0)
    squares = {
        "test": [(torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=gen), i % 3) for i in range(5)],
        "val": [(torch.zeros(size, size, 3, dtype=torch.uint8), 0)],
    }
    classes = classes or list(model.class_names)
    module = SimpleNamespace(
        Stream=lambda url, storage_options=None: FakeStream(url, storage_options, classes, squares),
        StreamLoader=lambda dataset, batch_size, num_workers: DataLoader(dataset, batch_size=batch_size),
    )
    monkeypatch.setattr(stream_eval, "import_stream", lambda: module)
    return squares


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_the_subset_is_predicted_in_its_own_order_view_by_view(monkeypatch, model, tta):
    squares = _stream(monkeypatch, model)
    images, pred = stream_eval.predict_stream(model, "/shards", "test", {"k": 1}, batch_size=2, tta=tta)
    stream = FakeStream.made[-1]
    assert stream.storage_options == {"k": 1} and stream.fits == [(model.preprocessing.resize_size, "vgg11", True)]
    assert images.source == "the test split of the stream /shards"
    assert images.items == stream.split().subsets["test"]
    assert sorted(pred.indices) == list(range(5)) and pred.indices[:2] == [3, 0]  # the loader's order, mapped
    views = tta_transform(model.preprocessing, tta)
    with torch.inference_mode():
        for row, position in enumerate(pred.indices):
            x = views(squares["test"][position][0].permute(2, 0, 1))
            x = x.unsqueeze(0) if x.ndim == 3 else x
            torch.testing.assert_close(pred.logits[row], model.module(x), atol=1e-4, rtol=1e-4)
    assert pred.logits.shape == (5, 1 if tta == "none" else 2, len(model.class_names))
    assert pred.temperature == model.temperature and pred.failures == {} and not pred.multilabel
    _, plain = stream_eval.predict_stream(model, "/shards", "test", calibrate=False)
    assert plain.temperature == 1.0


def test_a_stream_of_other_classes_or_without_the_subset_is_one_line(monkeypatch, model):
    _stream(monkeypatch, model, classes=["cats", "dogs", "owls"])
    with pytest.raises(UserError, match="holds the classes cats, dogs, owls, but the checkpoint was trained on"):
        stream_eval.predict_stream(model, "/shards", "test")
    _stream(monkeypatch, model)
    with pytest.raises(UserError, match=r"has no train subset \(it has test, val\): pass data.subset=..."):
        stream_eval.predict_stream(model, "/shards", "train")
    with pytest.raises(UserError, match="data.subset must be one of"):
        stream_eval.predict_stream(model, "/shards", "holdout")
