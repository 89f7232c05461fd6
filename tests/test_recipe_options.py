"""The recipe's optional keys do what they say: data.mixup / data.cutmix (training batches only),
model.label_smoothing (the training loss only), scheduler=one_cycle, and the callbacks ema and
early_stopping; each bad value is one line naming the key."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, assert_one_line_error, make_class_folders, run_cli_here

from vggtune.data.datamodule import ClassFolderDataModule


def _batch(dm: ClassFolderDataModule, training: bool):
    dm.trainer = SimpleNamespace(training=training)
    x, y = next(iter(dm.val_dataloader()))  # unshuffled, unaugmented: the same images each time
    return x, y, dm.on_after_batch_transfer((x.clone(), y.clone()), 0)


def _module(tmp_path, **kwargs):
    dm = ClassFolderDataModule(
        root=str(make_class_folders(tmp_path / "d", classes=3, per_class=8, size=32)),
        image_size=32,
        batch_size=12,
        num_workers=0,
        arch="vgg11",
        val_split=0.5,
        test_split=0,
        **kwargs,
    )
    dm.setup("fit")
    return dm


def test_mixup_blends_pairs_and_their_targets_in_training_batches_only(tmp_path):
    dm = _module(tmp_path, mixup=0.4)
    torch.manual_seed(0)
    x, y, (mixed, shares) = _batch(dm, training=True)
    assert shares.shape == (len(y), 3) and torch.allclose(shares.sum(1), torch.ones(len(y)))
    # torchvision's MixUp pairs each image with the one before it (a roll) and one share for the batch
    own = shares[torch.arange(len(y)), y]
    other = y.roll(1)
    lam = own[other != y][0]
    assert 0 < lam < 1 and torch.allclose(own[other != y], lam)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    _, _, (same, labels) = _batch(dm, training=False)  # validation: untouched
    assert torch.equal(same, x) and torch.equal(labels, y)


def test_cutmix_pastes_a_patch_whose_area_is_the_other_class_share(tmp_path):
    dm = _module(tmp_path, cutmix=1.0)
    torch.manual_seed(1)
    x, y, (mixed, shares) = _batch(dm, training=True)
    kept = (mixed == x).all(dim=1).float().mean(dim=(1, 2))  # each image's share of pixels left as they were
    pasted = (mixed == x.roll(1, 0)).all(dim=1).float().mean(dim=(1, 2))
    assert torch.allclose(kept + pasted, torch.ones(len(y)))
    differs = y.roll(1) != y
    torch.testing.assert_close(shares[torch.arange(len(y)), y][differs], kept[differs])
    assert 0 < kept[differs][0] < 1


def test_label_smoothing_changes_the_training_loss_and_not_the_validation_loss():
    from vggtune.model.module import VGGClassifier

    module = VGGClassifier("vgg11", ["a", "b", "c"], weights="none", head="pooled", label_smoothing=0.2)
    logged = {}
    module.log = lambda name, value, **_: logged.setdefault(name, value)
    module.eval()  # no dropout: the loss is a function of the batch
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    loss = module.training_step((x, y), 0)
    logp = module(x).log_softmax(1)
    smoothed = (-(0.8 * logp.gather(1, y[:, None]).squeeze(1) + 0.2 * logp.mean(1))).mean()
    torch.testing.assert_close(loss, smoothed)
    module.validation_step((x, y), 0)
    torch.testing.assert_close(logged["val/loss"], F.nll_loss(logp, y))


def test_one_cycle_rises_to_each_groups_own_lr_then_anneals_and_cycles_beta1():
    from vggtune.model.schedulers import one_cycle

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 2.5e-4}])
    sched = one_cycle(opt, total_steps=100, steps_per_epoch=20, pct_start=0.25)["scheduler"]
    lrs, betas = [], []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    head = [lr[0] for lr in lrs]
    assert head[0] == pytest.approx(1e-3 / 25) and max(head) == pytest.approx(1e-3)
    assert head.index(max(head)) in (24, 25) and head[-1] < 1e-3 / 25 / 1e3
    assert all(lr[1] == pytest.approx(lr[0] / 4) for lr in lrs)  # the groups keep their ratio
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85)


@pytest.mark.slow
def test_ema_and_early_stopping_through_the_command_line(tmp_path, tiny_data):
    run = tmp_path / "run"
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *[a for a in TINY if not a.startswith("trainer.max_epochs")],
        "trainer.max_epochs=4",
        "callbacks=[default,ema,early_stopping]",
        "callbacks.ema.decay=0.5",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=2",  # no epoch gains 2
        "data.mixup=0.2",
        "data.cutmix=1.0",
        "model.label_smoothing=0.1",
        "scheduler=one_cycle",
        "test_after_fit=false",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["epochs"] == 2  # epoch 0 sets the best val/acc, epoch 1 cannot beat it by 2: stopped before 4
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    key = "model.classifier.6.weight"
    assert not torch.equal(last["state_dict"][key], last["current_model_state"][key])  # the average is its own
    # best.ckpt holds the weights that were validated: evaluated on the same images, they give the NLL that
    # its epoch's validation measured (the file's calibration record)
    ev = run_cli_here(
        "eval",
        f"ckpt={run / 'checkpoints' / 'best.ckpt'}",
        "data.subset=val",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["calibration"]["nll"]
    assert evaluated == pytest.approx(best["vggtune"]["calibration"]["nll"], rel=1e-4)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.mixup=-1", "data.mixup"),
        ("data.cutmix=lots", "data.cutmix"),
        ("model.label_smoothing=1", "model.label_smoothing"),
        ("scheduler=one_cycle scheduler.pct_start=0", "pct_start"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(tmp_path, tiny_data, override, needle):
    proc = run_cli_here("train", f"data.root={tiny_data}", *TINY, *override.split(), cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "outputs").exists()


def test_mixing_is_refused_for_several_labels_per_image_and_for_cached_features(tmp_path, tiny_data):
    csv = tmp_path / "labels.csv"
    files = sorted(p for p in tiny_data.rglob("*") if p.is_file())
    csv.write_text("path,labels\n" + "".join(f"{p},{p.parent.name} x\n" for p in files))
    proc = run_cli_here("train", f"data.labels={csv}", "data.label_delim=' '", *TINY, "data.mixup=0.2", cwd=tmp_path)
    assert_one_line_error(proc, "data.mixup=0.2", "several labels")
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "finetune=linear_probe",
        "data.cache_features=true",
        "data.cutmix=1",
        f"data.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "data.cache_features=true", "data.cutmix=0")
