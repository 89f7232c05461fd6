"""Building VGGs: weights from a local file or torchvision's cache, the new head, the layer groups."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vggtune.core.errors import UserError
from vggtune.model.arch import GROUPS, guess_arch, layer_groups, preprocessing, split_at_fc7
from vggtune.model.weights import build_vgg, load_weights


def _saved_vgg(path, arch="vgg11", seed=0):
    torch.manual_seed(seed)
    state = torchvision.models.get_model(arch).state_dict()
    torch.save(state, path)
    return state


def test_local_weights_file_fills_every_backbone_tensor(tmp_path):
    state = _saved_vgg(tmp_path / "w.pth")
    model = build_vgg("vgg11", num_classes=5, weights=str(tmp_path / "w.pth"))
    got = model.state_dict()
    backbone = [k for k in state if not k.startswith("classifier.6.")]
    assert backbone and all(torch.equal(got[k], state[k]) for k in backbone)
    assert got["classifier.6.weight"].shape == (5, 4096)


@pytest.mark.slow
def test_imagenet_weights_come_from_torchvision_cache_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = _saved_vgg(cache / "vgg11-8a719046.pth", seed=7)

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = build_vgg("vgg11", num_classes=3, weights="imagenet")
    assert torch.equal(model.state_dict()["features.0.weight"], state["features.0.weight"])


def test_pickle_that_runs_code_is_refused_as_weights(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"features.0.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="refused"):
        build_vgg("vgg11", num_classes=3, weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


@pytest.mark.parametrize("arch", ["vgg11", "vgg13_bn", "vgg16", "vgg19_bn"])
def test_guess_arch_from_a_state_dict(arch):
    assert guess_arch(torchvision.models.get_model(arch).state_dict()) == arch


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
def test_layer_groups_cover_the_model_once(arch):
    model = build_vgg(arch, num_classes=4, weights="none")
    groups = layer_groups(model)
    assert tuple(groups) == GROUPS
    ids = [id(p) for g in groups.values() for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    for name in ("block1", "block5"):
        assert isinstance(list(groups[name])[-1], nn.MaxPool2d)
    assert groups["head"].out_features == 4


def test_vgg16_has_torchvisions_parameter_count():
    model = build_vgg("vgg16", num_classes=1000, weights="none")
    assert (
        sum(p.numel() for p in model.parameters()) == torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["num_params"]
    )


def test_preprocessing_from_weights_metadata_and_override():
    p = preprocessing("vgg16")
    assert (p.image_size, p.resize_size) == (224, 256)
    assert p.mean == pytest.approx((0.485, 0.456, 0.406))
    small = preprocessing("vgg16", 112)
    assert (small.image_size, small.resize_size) == (112, 128)
    with pytest.raises(UserError, match="image_size"):
        preprocessing("vgg16", 8)


def test_split_at_fc7_is_the_model_cut_after_fc7s_relu():
    torch.manual_seed(0)
    model = build_vgg("vgg11", num_classes=3, weights="none").eval()
    to_fc7, rest = split_at_fc7(model)
    seen = {}
    model.classifier[4].register_forward_hook(lambda m, i, out: seen.update(fc7=out.clone()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        fc7 = to_fc7(x)
        assert torch.allclose(rest(fc7), logits, atol=1e-5)
    assert fc7.shape == (2, 4096) and (fc7 >= 0).all()
    assert torch.allclose(fc7, seen["fc7"], atol=1e-6)


@pytest.mark.slow
def test_load_weights_with_head_keeps_the_imagenet_classifier(tmp_path):
    state = _saved_vgg(tmp_path / "w.pth")
    model = torchvision.models.vgg11()
    load_weights(model, "vgg11", str(tmp_path / "w.pth"), head=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    state["classifier.6.weight"], state["classifier.6.bias"] = torch.zeros(5, 4096), torch.zeros(5)
    torch.save(state, tmp_path / "five.pth")
    with pytest.raises(UserError, match="no 1000-class ImageNet head"):
        load_weights(torchvision.models.vgg11(), "vgg11", str(tmp_path / "five.pth"), head=True)


@pytest.mark.slow
def test_a_file_of_conv_layers_only_serves_the_pooled_head_and_the_vgg_head_says_what_it_lacks(tmp_path):
    convs = {k: v for k, v in _saved_vgg(tmp_path / "w.pth", arch="vgg11_bn").items() if k.startswith("features.")}
    torch.save(convs, tmp_path / "convs.pth")
    model = build_vgg("vgg11_bn", num_classes=3, weights=str(tmp_path / "convs.pth"), head="pooled")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in convs.items())
    with pytest.raises(UserError, match="conv layers only, which model.head=pooled needs"):
        build_vgg("vgg11_bn", num_classes=3, weights=str(tmp_path / "convs.pth"), head="vgg")
    del convs["features.0.weight"]  # and a damaged one is still refused under the pooled head
    torch.save(convs, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="do not fit vgg11_bn"):
        build_vgg("vgg11_bn", num_classes=3, weights=str(tmp_path / "broken.pth"), head="pooled")


@pytest.mark.slow
def test_pooled_head_keeps_the_pretrained_convs_and_replaces_pool_and_classifier(tmp_path):
    state = _saved_vgg(tmp_path / "w.pth", arch="vgg11_bn")
    model = build_vgg("vgg11_bn", num_classes=4, weights=str(tmp_path / "w.pth"), dropout=0.5, head="pooled")
    got = model.state_dict()
    convs = [k for k in state if k.startswith("features.")]
    assert convs and all(torch.equal(got[k], state[k]) for k in convs)
    assert not any(
        k.startswith("classifier.")
        and got.get(k) is not None
        and got[k].shape == state[k].shape
        and torch.equal(got[k], state[k])
        for k in state
        if k in got
    )
    # fastai's create_head: BN, dropout p/2, linear 1024 -> 512, ReLU, BN, dropout p, linear -> classes
    c = model.classifier
    assert isinstance(c[0], nn.BatchNorm1d) and c[0].num_features == 1024 and c[1].p == 0.25
    assert (c[2].in_features, c[2].out_features) == (1024, 512) and c[5].p == 0.5
    assert (c[6].in_features, c[6].out_features) == (512, 4)
    x = torch.randn(3, 3, 40, 40)
    model.eval()
    feats = model.features(x)
    pooled = torch.cat([feats.amax(dim=(2, 3)), feats.mean(dim=(2, 3))], 1)
    torch.testing.assert_close(model(x), c(pooled))
    groups = layer_groups(model)
    assert groups["head"] is c[6] and list(groups["fc"]) == list(c[:6])
    to_fc7, rest = split_at_fc7(model)
    torch.testing.assert_close(rest(to_fc7(x)), model(x))


def test_unknown_head_is_refused():
    with pytest.raises(UserError, match="model.head must be one of vgg, pooled"):
        build_vgg("vgg11", num_classes=3, weights="none", head="fastai")


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn"])
def test_the_pooled_head_from_random_init_has_torchvisions_conv_init_and_nothing_left_unset(arch):
    # Its fc6-fc8 are never drawn (the head replaces them); the conv layers follow torchvision's VGG init:
    # kaiming normal (fan_out, relu), zero biases, BatchNorm at weight 1, bias 0 and fresh statistics.
    torch.manual_seed(0)
    ours = build_vgg(arch, 5, "none", head="pooled")
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    for m in ours.features.modules():
        if isinstance(m, nn.Conv2d):
            expected = (2 / (m.out_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5
            assert abs(float(m.weight.std()) - expected) < 0.1 * expected and not m.bias.any()
        elif isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and not m.bias.any() and m.num_batches_tracked == 0
            assert not m.running_mean.any() and (m.running_var == 1).all()
    torch.manual_seed(0)
    again = build_vgg(arch, 5, "none", head="pooled")  # seeded: the same network again
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values()))
    assert torch.isfinite(ours.eval()(torch.randn(2, 3, 32, 32))).all()
