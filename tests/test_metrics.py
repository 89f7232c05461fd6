"""Every metric that training logs and that eval writes equals scikit-learn's score of the same predictions.

The predictions are scripted: a module whose logits for each image are fixed in advance, fed in
unshuffled batches sorted by class, as the validation split is. The first batch then holds one
class that the model gets right: the case in which torchmetrics' compute groups merged macro F1
with top-5 accuracy and reported the one for the other.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, top_k_accuracy_score
from torch.utils.data import DataLoader, TensorDataset

from vggtune.model.module import VGGClassifier
from vggtune.use.evaluation import compute_metrics

PER_CLASS, BATCH = 6, 4


class ScriptedClassifier(VGGClassifier):
    """A VGGClassifier whose forward returns ``table[i]`` for the image that carries index ``i``.

    The real module's steps, metrics and logging run unchanged; ``0 * bias`` keeps a gradient path
    so that the training step's backward and optimizer step run as well.
    """

    def __init__(self, table: torch.Tensor, n: int):
        super().__init__(
            "vgg11",
            [f"c{i}" for i in range(n)],
            weights="none",
            dropout=0.0,
            optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0},
            finetune={"name": "full"},
        )
        self.table = table

    def forward(self, x):
        index = x[:, 0, 0, 0].long()
        return self.table[index] + 0.0 * self.model.classifier[6].bias.sum()


def _scripted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets sorted by class; logits right on the first batch (class 0), about half right after it."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n).repeat_interleave(PER_CLASS)
    logits = torch.randn(len(targets), n, generator=g)
    right = torch.rand(len(targets), generator=g) < 0.5
    right[:BATCH] = True
    logits[right, targets[right]] += 4.0
    assert (targets[:BATCH] == 0).all() and (logits[:BATCH].argmax(1) == 0).all()
    return logits, targets


def _loader(targets: torch.Tensor) -> DataLoader:
    images = torch.zeros(len(targets), 3, 8, 8)
    images[:, 0, 0, 0] = torch.arange(len(targets), dtype=torch.float32)  # each image carries its index
    return DataLoader(TensorDataset(images, targets), batch_size=BATCH, shuffle=False)


def _sklearn(logits: torch.Tensor, targets: torch.Tensor, n: int) -> dict[str, float]:
    y, scores = targets.numpy(), logits.double().softmax(1).numpy()
    pred = scores.argmax(1)
    expected = {
        "acc": accuracy_score(y, pred),
        "f1": f1_score(y, pred, average="macro"),
        "bal_acc": balanced_accuracy_score(y, pred),
        "loss": log_loss(y, scores, labels=list(range(n))),
    }
    if n >= 6:
        expected["acc_top5"] = top_k_accuracy_score(y, scores, k=5, labels=list(range(n)))
    return expected


# n=6 is the quick tier's (top-5 is logged from 6 classes, and the compute-group trap shows); 3, 5 (no top-5)
# and 10 add seconds each.
@pytest.mark.parametrize(
    "n",
    [
        pytest.param(3, marks=pytest.mark.slow),
        pytest.param(5, marks=pytest.mark.slow),
        6,
        pytest.param(10, marks=pytest.mark.slow),
    ],
)
def test_logged_metrics_equal_scikit_learn_on_the_same_predictions(tmp_path, n):
    logits, targets = _scripted(n, seed=n)
    module = ScriptedClassifier(logits, n)
    loader = _loader(targets)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=2,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = _sklearn(logits, targets, n)
    if n >= 6:  # the two differ: a merge would show
        assert abs(expected["f1"] - expected["acc_top5"]) > 0.05

    for name, value in expected.items():
        assert logged[f"val/{name}"] == pytest.approx(value, abs=1e-5), name
    assert logged["val/acc_best"] == pytest.approx(expected["acc"], abs=1e-6)
    assert logged["train/acc"] == pytest.approx(expected["acc"], abs=1e-6)  # the same images, shuffle off
    assert ("val/acc_top5" in logged) == (n >= 6)  # with 5 classes it would always be 1

    tested = trainer.test(module, dataloaders=loader, verbose=False)[0]
    assert ("test/acc_top5" in tested) == (n >= 6)
    for name, value in expected.items():
        assert tested[f"test/{name}"] == pytest.approx(value, abs=1e-5), name

    result = compute_metrics(logits.softmax(1), targets, module.class_names)  # what eval writes
    assert ("acc_top5" in result.metrics) == (n >= 6)
    for name, value in expected.items():
        if name != "loss":
            assert result.metrics[name] == pytest.approx(value, abs=1e-6), name
    per_class_f1 = f1_score(targets.numpy(), logits.argmax(1).numpy(), average=None, labels=list(range(n)))
    assert np.allclose([row["f1"] for row in result.per_class], per_class_f1, atol=1e-6)


def test_balanced_accuracy_leaves_out_classes_without_images_as_scikit_learn_does():
    from vggtune.model.module import BalancedAccuracy

    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 3, 3, 1, 0, 2, 3])  # class 3 is predicted but has no images
    metric = BalancedAccuracy(4)
    metric.update(pred[:3], y[:3])
    metric.update(pred[3:], y[3:])
    expected = balanced_accuracy_score(y.numpy(), pred.numpy())  # (2/4 + 1/2 + 1/2) / 3
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.5)
