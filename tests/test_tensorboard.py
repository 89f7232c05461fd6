"""What `vggtune train` writes for TensorBoard, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, assert_one_line_error, run_cli_here
from hydra import compose, initialize_config_module
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from vggtune.model.finetune import GROUPS
from vggtune.training.figures import row_normalised
from vggtune.training.tensorboard import HPARAM_METRICS, EpochSpeed, flat_config, images_per_class_table
from vggtune.training.tensorboard_images import ConfusionMatrixImage, PredictionGrid

# Every scalar docs/tensorboard.md promises (the tiny run trains every group: finetune=full).
SCALARS = (
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/bal_acc",
    "val/f1",
    "val/acc_best",
    "trainable_params",
    "speed/epoch_seconds",
    "speed/train_images_per_second",
    *(f"lr/{g}" for g in GROUPS),
)
IMAGES = ("val/confusion_matrix", "val/predictions")


def load_events(run_dir) -> EventAccumulator:
    """Every event of the run's TensorBoard folder, nothing sampled away."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def events(tiny_run) -> EventAccumulator:
    return load_events(tiny_run)


@pytest.fixture(scope="module")
def summary(tiny_run) -> dict:
    return json.loads((tiny_run / "metrics.json").read_text())


def test_every_scalar_is_logged_with_finite_values(events, summary):
    tags = events.Tags()["scalars"]
    for tag in SCALARS:
        assert tag in tags, (tag, tags)
        assert all(math.isfinite(e.value) for e in events.Scalars(tag)), tag
    assert "hp_metric" not in tags
    for metric in HPARAM_METRICS:
        assert events.Scalars(metric)[-1].value == pytest.approx(summary["metrics"][metric])


def test_speed_is_a_real_measurement(events, summary):
    epoch_seconds = events.Scalars("speed/epoch_seconds")[-1].value
    per_second = events.Scalars("speed/train_images_per_second")[-1].value
    train_images = sum(summary["data"]["counts"]["train"].values())
    assert epoch_seconds > 0 and per_second > 0
    # Training is part of the epoch: its images at the measured rate cannot take longer than the epoch.
    assert train_images / per_second <= epoch_seconds


def test_validation_images_are_logged_with_each_validation(events):
    assert sorted(events.Tags()["images"]) == sorted(IMAGES)
    val_steps = [e.step for e in events.Scalars("val/acc")]
    for tag in IMAGES:
        logged = events.Images(tag)
        assert [e.step for e in logged] == val_steps, tag  # same x position as the validation curves
        pixels = np.asarray(Image.open(io.BytesIO(logged[-1].encoded_image_string)).convert("RGB"))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200, pixels.shape
        assert pixels.std() > 10, f"{tag} is blank"


def test_text_has_the_classes_and_images_per_class_and_subset(events, summary):
    texts = {t: events.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in events.Tags()["tensors"]}
    assert set(texts) == {"data/classes", "data/images_per_class"}
    for i, name in enumerate(summary["class_names"]):
        assert f"| {i} | {name} |" in texts["data/classes"]
    counts = summary["data"]["counts"]
    table = texts["data/images_per_class"]
    assert table.splitlines()[0] == "| class | " + " | ".join(counts) + " | all |"
    for name in summary["class_names"]:
        row = [counts[s][name] for s in counts]
        assert f"| {name} | " + " | ".join(map(str, row)) + f" | {sum(row)} |" in table


def test_hparams_session_has_the_config_and_the_metrics(events, tiny_run):
    content = {
        tag: events.SummaryMetadata(tag).plugin_data
        for tag in (
            hparams_metadata.EXPERIMENT_TAG,
            hparams_metadata.SESSION_START_INFO_TAG,
            hparams_metadata.SESSION_END_INFO_TAG,
        )
    }
    assert all(p.plugin_name == hparams_metadata.PLUGIN_NAME for p in content.values())
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG].content)
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG].content
    )
    config = yaml.safe_load((tiny_run / ".hydra" / "config.yaml").read_text())
    assert start.hparams["model.arch"].string_value == config["model"]["arch"]
    assert start.hparams["optim.lr"].number_value == pytest.approx(config["optim"]["lr"])
    assert start.hparams["data.batch_size"].number_value == config["data"]["batch_size"]
    assert start.hparams["finetune.name"].string_value == config["finetune"]["name"]
    assert not any(k.startswith(("paths.", "hydra.", "callbacks.", "logger.")) for k in start.hparams)
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG].content)
    assert end.status == api_pb2.STATUS_SUCCESS


@pytest.mark.slow
def test_images_every_n_epochs_0_writes_no_images_but_the_rest(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "logger.images_every_n_epochs=0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = load_events(run_dir)
    assert events.Tags()["images"] == []
    assert "val/acc" in events.Tags()["scalars"] and "data/classes" in events.Tags()["tensors"]


def test_a_negative_image_frequency_is_refused_in_one_line(tmp_path, tiny_data):
    proc = run_cli_here("train", f"data.root={tiny_data}", *TINY, "logger.images_every_n_epochs=-1", cwd=tmp_path)
    assert_one_line_error(proc, "logger.images_every_n_epochs", "0 or more")


def test_images_are_due_every_n_epochs_and_after_the_last():
    callback = ConfusionMatrixImage(every_n_epochs=2)
    due = [e for e in range(5) if callback.due(SimpleNamespace(sanity_checking=False, current_epoch=e, max_epochs=5))]
    assert due == [1, 3, 4]
    assert not callback.due(SimpleNamespace(sanity_checking=True, current_epoch=1, max_epochs=5))


def test_prediction_grid_shows_mistakes_first_and_undoes_the_normalisation():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    module = SimpleNamespace(hparams=SimpleNamespace(preprocessing={"mean": mean, "std": std}))
    grid = PredictionGrid(every_n_epochs=1, n_images=4)
    grid.reset(module)
    # Six images; image i is filled with the value i / 10 before normalisation.
    raw = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 4, 4) / 10
    images = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    probs = torch.tensor(
        [
            [0.9, 0.05, 0.05],  # 0 right, sure
            [0.6, 0.3, 0.1],  # 1 wrong (0), 0.6
            [0.2, 0.2, 0.6],  # 2 right, 0.6
            [0.1, 0.8, 0.1],  # 3 wrong (1), 0.8
            [0.3, 0.4, 0.3],  # 4 right, unsure
            [0.1, 0.1, 0.8],
        ]
    )  # 5 right, 0.8
    for batch in (slice(0, 4), slice(4, 6)):  # over two batches, as validation feeds it
        grid.update(probs[batch], target[batch], images[batch])
    data = grid.collect(SimpleNamespace(world_size=1), module)
    # Mistakes first, the more confident first; then the least sure hits.
    assert data["target"] == [0, 1, 1, 2] and data["pred"] == [1, 0, 1, 2]
    assert data["conf"] == pytest.approx([0.8, 0.6, 0.4, 0.6])
    assert data["images"].shape == (4, 4, 4, 3)
    assert data["images"][:, 0, 0, 0] == pytest.approx([0.3, 0.1, 0.4, 0.2], abs=1e-6)


def test_prediction_grid_with_fewer_images_than_slots_shows_only_real_ones():
    module = SimpleNamespace(hparams=SimpleNamespace(preprocessing={"mean": [0, 0, 0], "std": [1, 1, 1]}))
    grid = PredictionGrid(every_n_epochs=1, n_images=8)
    grid.reset(module)
    grid.update(torch.tensor([[0.7, 0.3], [0.2, 0.8]]), torch.tensor([0, 0]), torch.zeros(2, 3, 2, 2))
    data = grid.collect(SimpleNamespace(world_size=1), module)
    assert data["target"] == [0, 0] and data["pred"] == [1, 0]


def test_prediction_grid_is_left_out_when_batches_hold_features_not_images():
    grid = PredictionGrid(every_n_epochs=1, n_images=4)
    grid.reset(None)
    grid.update(torch.tensor([[0.7, 0.3]]), torch.tensor([1]), torch.zeros(1, 4096))  # data.cache_features
    assert grid.collect(SimpleNamespace(world_size=1), None) is None


def test_per_batch_hooks_never_read_tensor_values():
    """Meta tensors have shapes but no data: reading a value (a host sync on a GPU) would raise."""
    images, labels = torch.empty(8, 3, 32, 32, device="meta"), torch.empty(8, dtype=torch.long, device="meta")
    speed = EpochSpeed()
    speed.on_train_epoch_start(None, None)
    for i in range(3):
        speed.on_train_batch_end(None, None, None, (images, labels), i)
    assert speed._stretch_images == 24
    grid = PredictionGrid(every_n_epochs=1, n_images=4)
    grid.reset(None)
    for _ in range(3):
        grid.update(torch.empty(8, 5, device="meta").softmax(dim=1), labels, images)
    assert grid._best["image"].shape == (4, 3, 32, 32)


def test_confusion_matrix_counts_true_class_by_predicted_class_over_batches():
    module = SimpleNamespace(class_names=["a", "b", "c"], device=torch.device("cpu"))
    callback = ConfusionMatrixImage(every_n_epochs=1)
    callback.reset(module)
    callback.update(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]), torch.tensor([0, 2]), torch.empty(2, 3, 4, 4))
    callback.update(torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([2]), torch.empty(1, 3, 4, 4))
    counts = callback.collect(SimpleNamespace(world_size=1), module)
    assert counts.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]  # rows: true class; columns: predicted
    callback.reset(module)  # the next validation epoch starts from zero
    callback.update(torch.tensor([[0.1, 0.8, 0.1]]), torch.tensor([1]), torch.empty(1, 3, 4, 4))
    assert callback.collect(SimpleNamespace(world_size=1), module).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_confusion_matrix_rows_are_fractions_of_the_true_class():
    counts = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    rates = row_normalised(counts)
    assert rates[0].tolist() == [0.75, 0.25, 0.0]
    assert rates[1].tolist() == [0.0, 0.0, 0.0]  # no images of that class: no division by zero
    assert rates[2].sum() == pytest.approx(1.0)


def test_images_per_class_table_has_totals():
    table = images_per_class_table({"train": {"a": 3, "b": 1}, "val": {"a": 1, "b": 2}})
    assert table.splitlines() == [
        "| class | train | val | all |",
        "|---|---|---|---|",
        "| a | 3 | 1 | 4 |",
        "| b | 1 | 2 | 3 |",
        "| **all** | 4 | 3 | 7 |",
    ]


def test_hparams_are_the_flattened_run_config():
    with initialize_config_module("vggtune.conf", version_base="1.3"):
        cfg = compose("train", overrides=["model=vgg19", "optim.lr=3e-4", "data.root=/somewhere"])
    flat = flat_config(cfg)
    assert flat["model.arch"] == "vgg19" and flat["optim.lr"] == pytest.approx(3e-4)
    assert flat["data.root"] == "/somewhere" and flat["seed"] == cfg.seed
    assert flat["model.compile"] in ("true", "false")  # words, not 1/0
    assert all(isinstance(v, (int, float, str)) for v in flat.values())
    assert not any(k.endswith("_partial_") or k.startswith(("paths.", "logger.", "callbacks.")) for k in flat)
