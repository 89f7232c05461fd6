"""`vggtune summary`: parameter totals, trainable counts under each finetune schedule, activation memory."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import torchvision
from conftest import assert_one_line_error, run_cli_here
from omegaconf import OmegaConf
from torch import nn

from vggtune.model.arch import layer_groups
from vggtune.model.weights import build_vgg
from vggtune.tasks.summary import summarize


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_cli_prints_and_writes_the_counts_of_the_model(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli_here(
        "summary",
        "model=vgg11",
        "data.image_size=32",
        "model.num_classes=5",
        "finetune=linear_probe",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    numbers = json.loads((run_dir / "summary.json").read_text())
    model = build_vgg("vgg11", num_classes=5, weights="none", head="pooled")  # the default head
    total, head = _numel(model), _numel(model.classifier)
    assert numbers["total_params"] == total
    assert numbers["trainable_params"] == head  # a linear probe trains the new head (all of the pooled one)
    assert numbers["frozen_params"] == total - head
    text = (run_dir / "summary.txt").read_text()
    for shown in (f"{total:,}", f"{head:,}", "[1, 64, 32, 32]", "[1, 5]", "Forward activations per image"):
        assert shown in text and shown in proc.stdout, shown
    assert "summary.txt" in proc.stdout and "summary.json" in proc.stdout


def test_vgg16_with_1000_classes_has_torchvisions_count():
    text, numbers = summarize("vgg16", 1000)
    expected = torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["num_params"]
    assert numbers["total_params"] == expected
    assert numbers["image_size"] == 224
    assert f"{expected:,}" in text


@pytest.fixture(scope="module")
def vgg11():
    """vgg11 with 4 classes, as summarize builds it for the tests below (built once: 130M parameters)."""
    return build_vgg("vgg11", num_classes=4, weights="none").eval()


@pytest.mark.parametrize(
    "schedule, trainable",
    [
        pytest.param("linear_probe", ("head",), marks=pytest.mark.slow),
        ("freeze_unfreeze", ("head", "fc")),
        pytest.param("gradual", ("head",), marks=pytest.mark.slow),
        ("full", ("head", "fc", "block5", "block4", "block3", "block2", "block1")),
    ],
)
def test_trainable_count_follows_the_schedule_at_epoch_0(vgg11, schedule, trainable):
    finetune = OmegaConf.to_container(OmegaConf.load(resources.files("vggtune.conf") / "finetune" / f"{schedule}.yaml"))
    _, numbers = summarize("vgg11", 4, 32, finetune)
    groups = layer_groups(vgg11)
    assert numbers["trainable_params"] == sum(_numel(groups[g]) for g in trainable)
    assert numbers["total_params"] == sum(_numel(g) for g in groups.values())


def test_activation_memory_is_the_distinct_tensors_of_a_forward_pass(vgg11):
    """Measured independently: forward hooks keep every layer's output; each storage is counted once."""
    _, numbers = summarize("vgg11", 4, 32)
    x = torch.randn(1, 3, 32, 32)
    outputs = [x]  # held, so that no storage is freed and reused during the pass
    hooks = [
        m.register_forward_hook(lambda module, inputs, output: outputs.append(output))
        for m in vgg11.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        vgg11(x)
    for h in hooks:
        h.remove()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in outputs}
    assert numbers["activation_bytes_per_image"] == sum(storages.values())


def test_bad_values_give_one_line(tmp_path):
    assert_one_line_error(
        run_cli_here("summary", "model.num_classes=0", cwd=tmp_path), "model.num_classes", "1 or more"
    )
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert_one_line_error(run_cli_here("summary", "model=vgg17", cwd=tmp_path), "unknown model 'vgg17'", "vgg16_bn")
