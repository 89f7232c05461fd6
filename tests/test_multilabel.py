"""Several labels per image (data.label_delim): reading them, training with BCE, the per-label thresholds,
and eval, predict, export, embed and TensorBoard of a multi-label checkpoint.

Every expected value is computed here: metrics by scikit-learn on the same probabilities,
probabilities by running the checkpoint's network by hand, thresholds by brute force over all cuts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import TINY, assert_one_line_error, run_cli_here
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score
from torch.utils.data import DataLoader, TensorDataset

from vggtune.core.errors import UserError
from vggtune.data.demo import make_multilabel_dataset
from vggtune.data.discovery import discover
from vggtune.data.images import load_rgb
from vggtune.model import multilabel as ml
from vggtune.model.module import VGGClassifier
from vggtune.use.evaluation import compute_multilabel_metrics
from vggtune.use.inference import load_model

N_LABELS, BATCH = 4, 4


def write_csv(path: Path, rows: list[list[str]], header=("path", "labels")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- reading the labels --------------------------------------------------------------------------


def test_label_cells_split_on_the_delimiter_and_bad_rows_are_named(tmp_path):
    make_multilabel_dataset(tmp_path / "grids", images=24, size=32, seed=1)
    root = tmp_path / "grids"
    rows = [
        [f"images/{i:04d}.jpg", label]
        for i, label in enumerate(
            ["checks dots", "dots  checks", "", "hstripes", "vstripes;dots"] + ["checks hstripes"] * 10 + ["dots"] * 9
        )
    ]
    rows.append(["images/0003.jpg", "dots"])  # listed again with other labels
    labels = write_csv(root / "mine.csv", rows)
    split = discover(root, val_split=0.25, test_split=0, labels=labels, label_delim=" ")
    assert split.multilabel and split.classes == ["checks", "dots", "hstripes", "vstripes;dots"]
    everything = dict(item for items in split.subsets.values() for item in items)
    assert everything[root / "images/0000.jpg"] == everything[root / "images/0001.jpg"] == (0, 1)  # sorted, no repeats
    assert everything[root / "images/0002.jpg"] == ()  # an empty cell: an image with no label
    assert root / "images/0003.jpg" not in everything
    assert any("line 5" in b.reason and "another label" in b.reason for b in split.skipped)


def test_a_val_label_that_train_never_has_is_left_out_with_its_line(tmp_path):
    make_multilabel_dataset(tmp_path / "g", images=8, size=32)
    rows = [[f"images/{i:04d}.jpg", "a b", "train"] for i in range(5)]
    rows += [["images/0005.jpg", "a", "val"], ["images/0006.jpg", "a zebra", "val"]]
    labels = write_csv(tmp_path / "g" / "s.csv", rows, header=("path", "labels", "split"))
    split = discover(tmp_path / "g", labels=labels, label_delim=" ")
    assert [p.name for p, _ in split.subsets["val"]] == ["0005.jpg"]
    assert any("line 8" in b.reason and "'zebra' is in val but not in train" in b.reason for b in split.skipped)


def test_a_delimiter_without_a_labels_csv_is_refused(tmp_path, tiny_data):
    with pytest.raises(UserError, match="needs data.labels"):
        discover(tiny_data, label_delim=" ")
    with pytest.raises(UserError, match="label_delim must be"):
        discover(tiny_data, labels="x.csv", label_delim="")


# --- training: metrics and thresholds against scikit-learn ----------------------------------------


class ScriptedMultilabel(VGGClassifier):
    """A multi-label VGGClassifier whose logits for the image carrying index ``i`` are ``table[i]``."""

    def __init__(self, table: torch.Tensor, **kwargs):
        super().__init__(
            "vgg11",
            [f"l{i}" for i in range(table.shape[1])],
            weights="none",
            dropout=0.0,
            optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0},
            finetune={"name": "full"},
            label_delim=" ",
            **kwargs,
        )
        self.table = table

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()] + 0.0 * self.model.classifier[6].bias.sum()


def scripted(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, N_LABELS, generator=g) < 0.4).float()
    targets[0, :] = 1.0  # every label has positives; the first image has them all
    logits = torch.randn(n, N_LABELS, generator=g) + 1.5 * (2 * targets - 1)  # informative, not perfect
    return logits, targets


def loader(targets: torch.Tensor) -> DataLoader:
    images = torch.zeros(len(targets), 3, 8, 8)
    images[:, 0, 0, 0] = torch.arange(len(targets), dtype=torch.float32)
    return DataLoader(TensorDataset(images, targets), batch_size=BATCH, shuffle=False)


def sklearn_scores(probs: np.ndarray, y: np.ndarray, cut) -> dict[str, float]:
    pred = (probs >= cut).astype(int)
    return {
        "acc": accuracy_score(y, pred),
        "map": average_precision_score(y, probs, average="macro"),
        "f1": f1_score(y, pred, average="macro", zero_division=0),
    }


def brute_force_best_f1(p: np.ndarray, y: np.ndarray) -> float:
    return max(f1_score(y, (p >= c).astype(int), zero_division=0) for c in np.append(np.unique(p), 1.1))


def test_logged_multilabel_metrics_and_thresholds_equal_scikit_learn(tmp_path):
    logits, targets = scripted()
    module = ScriptedMultilabel(logits)
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
    trainer.fit(module, train_dataloaders=loader(targets), val_dataloaders=loader(targets))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    probs, y = logits.sigmoid().double().numpy(), targets.long().numpy()
    expected = sklearn_scores(probs, y, 0.5)
    for name, value in expected.items():
        assert logged[f"val/{name}"] == pytest.approx(value, abs=1e-5), name
    assert logged["train/acc"] == pytest.approx(expected["acc"], abs=1e-6)
    bce = -(y * np.log(probs) + (1 - y) * np.log(1 - probs)).mean()
    assert logged["val/loss"] == pytest.approx(bce, abs=1e-5)

    # Each label's threshold reaches the best F1 any cut reaches on these images, and val/f1_tuned is their mean.
    thresholds = np.array(module.thresholds)
    best = [brute_force_best_f1(probs[:, j], y[:, j]) for j in range(N_LABELS)]
    at_chosen = [f1_score(y[:, j], (probs[:, j] >= thresholds[j]).astype(int)) for j in range(N_LABELS)]
    assert at_chosen == pytest.approx(best, abs=1e-9)
    assert logged["val/f1_tuned"] == pytest.approx(np.mean(best), abs=1e-6)
    assert best != pytest.approx([f1_score(y[:, j], (probs[:, j] >= 0.5).astype(int)) for j in range(N_LABELS)])

    # test/* as eval measures them: each label at its chosen threshold (mAP needs no threshold).
    tested = trainer.test(module, dataloaders=loader(targets), verbose=False)[0]
    for name, value in sklearn_scores(probs, y, thresholds).items():
        assert tested[f"test/{name}"] == pytest.approx(value, abs=1e-5), name

    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["vggtune"]["thresholds"] == list(thresholds) and "calibration" not in checkpoint["vggtune"]


def test_a_fixed_threshold_is_used_for_every_label_and_the_metrics():
    logits, targets = scripted(seed=2)
    module = ScriptedMultilabel(logits, threshold=0.7)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader(targets), val_dataloaders=loader(targets))
    assert module.thresholds == [0.7] * N_LABELS
    expected = sklearn_scores(logits.sigmoid().double().numpy(), targets.long().numpy(), 0.7)
    assert float(trainer.callback_metrics["val/f1"]) == pytest.approx(expected["f1"], abs=1e-5)
    assert "val/f1_tuned" not in trainer.callback_metrics


def test_eval_metrics_per_label_equal_scikit_learn():
    logits, targets = scripted(n=40, seed=3)
    probs = logits.sigmoid()
    thresholds = [0.3, 0.5, 0.6, 0.8]
    result = compute_multilabel_metrics(probs, targets, [f"l{i}" for i in range(N_LABELS)], thresholds)
    p, y = probs.double().numpy(), targets.long().numpy()
    pred = (p >= np.array(thresholds)).astype(int)
    assert result.metrics["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert result.metrics["map"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-5)
    assert result.metrics["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)
    for j, row in enumerate(result.per_class):
        assert row["precision"] == pytest.approx(precision_score(y[:, j], pred[:, j]), abs=1e-6)
        assert row["recall"] == pytest.approx(recall_score(y[:, j], pred[:, j]), abs=1e-6)
        assert row["f1"] == pytest.approx(f1_score(y[:, j], pred[:, j]), abs=1e-6)
        assert row["ap"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-5)
        assert row["images"] == y[:, j].sum() and row["predicted"] == pred[:, j].sum()


# --- the whole pipeline on a small generated data set ----------------------------------------------


@pytest.fixture(scope="module")
def grids(tmp_path_factory) -> Path:
    return make_multilabel_dataset(tmp_path_factory.mktemp("ml") / "grids", images=48, size=40, seed=0)


@pytest.fixture(scope="module")
def ml_run(grids, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("mlwork")
    run_dir = work / "run"
    proc = run_cli_here(
        "train",
        f"data.root={grids}",
        "data.labels=labels.csv",
        "data.label_delim=' '",
        "data.test_split=0.25",
        "data.val_split=0.25",
        *TINY,
        f"hydra.run.dir={run_dir}",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def sigmoid_by_hand(model, paths) -> torch.Tensor:
    with torch.inference_mode():
        return model.module(torch.stack([model.transform(load_rgb(p)) for p in paths])).sigmoid()


@pytest.mark.slow
def test_training_monitors_map_and_keeps_thresholds_and_labels_in_the_run(ml_run):
    summary = json.loads((ml_run / "metrics.json").read_text())
    assert summary["monitor"] == "val/map" and "val/map" in summary["metrics"] and "test/map" in summary["metrics"]
    ckpt = torch.load(ml_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["label_delim"] == " " and len(ckpt["vggtune"]["thresholds"]) == 5
    assert summary["best"]["thresholds"] == ckpt["vggtune"]["thresholds"]
    rows = list(csv.DictReader(open(ml_run / "split.csv", encoding="utf-8")))
    assert {r["subset"] for r in rows} == {"train", "val", "test"} and any(" " in r["class"] for r in rows)


@pytest.mark.slow
def test_eval_of_the_runs_test_split_agrees_with_scikit_learn_at_the_checkpoints_thresholds(ml_run, grids, tmp_path):
    proc = run_cli_here(
        "eval",
        f"ckpt={ml_run / 'checkpoints' / 'best.ckpt'}",
        "data.num_workers=0",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'ev'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    model = load_model(ml_run / "checkpoints" / "best.ckpt", "cpu")
    labels = {r["path"]: r["labels"].split() for r in csv.DictReader(open(grids / "labels.csv", encoding="utf-8"))}
    test = [r["path"] for r in csv.DictReader(open(ml_run / "split.csv", encoding="utf-8")) if r["subset"] == "test"]
    y = np.array([[name in labels[p] for name in model.class_names] for p in test]).astype(int)
    probs = sigmoid_by_hand(model, [grids / p for p in test]).double().numpy()
    expected = sklearn_scores(probs, y, np.array(model.module.thresholds))
    assert summary["multilabel"] is True and summary["data"]["images"] == len(test)
    for name, value in expected.items():
        assert summary["metrics"][name] == pytest.approx(value, abs=1e-5), name
    assert summary["thresholds"] == pytest.approx(dict(zip(model.class_names, model.module.thresholds)))
    trained = json.loads((ml_run / "metrics.json").read_text())["metrics"]  # training's test/* of best.ckpt
    for name in ("acc", "map", "f1"):
        assert trained[f"test/{name}"] == pytest.approx(summary["metrics"][name], abs=1e-5), name
    assert [r["label"] for r in csv.DictReader(open(tmp_path / "ev" / "per_label.csv"))] == model.class_names
    assert (tmp_path / "ev" / "per_label.png").stat().st_size > 5000
    wrong = {
        str(grids / p)
        for i, p in enumerate(test)
        if ((probs[i] >= np.array(model.module.thresholds)).astype(int) != y[i]).any()
    }
    assert {r["path"] for r in csv.DictReader(open(tmp_path / "ev" / "misclassified.csv"))} == wrong


@pytest.mark.slow
def test_predict_lists_the_labels_over_their_thresholds_and_every_probability(ml_run, grids, tmp_path):
    ckpt = ml_run / "checkpoints" / "best.ckpt"
    images = sorted((grids / "images").iterdir())[:6]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    proc = run_cli_here(
        "predict",
        f"ckpt={ckpt}",
        f"input={folder}",
        "num_workers=0",
        "device=cpu",
        "output=p.csv",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model(ckpt, "cpu")
    probs = sigmoid_by_hand(model, sorted(folder.iterdir()))
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    for row, p in zip(rows, probs):
        assert [float(row[f"prob_{n}"]) for n in model.class_names] == pytest.approx(p.tolist(), abs=1e-5)
        over = {n for n, v, t in zip(model.class_names, p.tolist(), model.module.thresholds) if v >= t}
        assert set(row["labels"].split()) == over


@pytest.mark.slow
def test_the_export_gives_sigmoid_probabilities_and_its_json_the_thresholds(ml_run, grids, tmp_path):
    from omegaconf import OmegaConf

    from vggtune.tasks.export import export_checkpoint

    ckpt = ml_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "m.onnx"
    info = export_checkpoint(
        OmegaConf.create(
            {
                "ckpt": str(ckpt),
                "format": "onnx",
                "output": str(out),
                "logits": False,
                "paths": {"run_dir": str(tmp_path / "run")},
            }
        )
    )
    model = load_model(ckpt, "cpu")
    assert info["multilabel"] is True
    assert info["thresholds"] == pytest.approx(dict(zip(model.class_names, model.module.thresholds)))
    import onnxruntime

    paths = sorted((grids / "images").iterdir())[:3]
    normalised = torch.stack([model.transform(load_rgb(p)) for p in paths])
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {info["input_name"]: (normalised * std + mean).numpy()}
    )[0]
    torch.testing.assert_close(torch.from_numpy(got), sigmoid_by_hand(model, paths), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_an_int8_export_keeps_the_thresholds_and_is_judged_by_label_sets(ml_run, tmp_path):
    from vggtune.use import export, heldout

    ckpt = ml_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "m.int8.onnx"
    proc = run_cli_here(
        "export",
        f"ckpt={ckpt}",
        "quantize=int8",
        "force=true",
        "calibration_images=8",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(Path(f"{out}.json").read_text())
    model = load_model(ckpt, "cpu")
    assert info["multilabel"] is True
    assert info["thresholds"] == pytest.approx(dict(zip(model.class_names, model.module.thresholds)))
    held = heldout.held_out(model, None, "val")
    probs = heldout.probabilities(export.onnx_session_runner(out), held.images)
    cuts = torch.tensor(model.module.thresholds)
    truth = np.zeros((len(held.targets), len(model.class_names)), dtype=int)
    for row, labels in enumerate(held.targets):
        truth[row, list(labels)] = 1
    decided = (probs >= cuts).long().numpy()
    check = info["quantized"]["check"]
    assert check["quantized"]["acc"] == pytest.approx(accuracy_score(truth, decided), abs=1e-4)  # exact match
    assert check["quantized"]["f1"] == pytest.approx(
        f1_score(truth, decided, average="macro", zero_division=0), abs=1e-4
    )
    assert "map" in check["quantized"] and 0 <= check["agreement"] <= 1


@pytest.mark.slow
def test_tensorboard_shows_per_label_scores_instead_of_the_confusion_matrix(ml_run):
    from tensorboard.plugins.hparams import metadata as hparams_metadata
    from test_tensorboard import load_events

    events = load_events(ml_run)
    assert sorted(events.Tags()["images"]) == ["val/per_label", "val/predictions"]
    assert {"val/map", "val/f1_tuned"} <= set(events.Tags()["scalars"])
    content = events.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content
    columns = [m.name.tag for m in hparams_metadata.parse_experiment_plugin_data(content).metric_infos]
    assert columns == ["val/acc", "val/f1", "val/loss", "val/map"]  # the monitored metric has a column


@pytest.mark.slow
def test_embed_colours_by_the_first_label_and_lists_all_of_them(ml_run, grids, tmp_path):
    proc = run_cli_here(
        "embed",
        f"ckpt={ml_run / 'checkpoints' / 'best.ckpt'}",
        f"data.root={grids}",
        "data.labels=labels.csv",
        "data.label_delim=' '",
        "data.num_workers=0",
        "device=cpu",
        "tsne.perplexity=5",
        f"hydra.run.dir={tmp_path / 'em'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = {r["path"]: r["labels"] for r in csv.DictReader(open(grids / "labels.csv", encoding="utf-8"))}
    rows = list(csv.DictReader(open(tmp_path / "em" / "embeddings.csv", encoding="utf-8")))
    assert len(rows) == len(labels) and all(r["class"] == labels[r["path"]] for r in rows)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.balance=sampler", "data.balance=sampler balances single-label"),
        ("monitor=val/acc_top5", "is not logged with several labels"),
        ("threshold=1.5", "threshold must be auto"),
    ],
)
def test_settings_that_do_not_fit_several_labels_are_refused_in_one_line(grids, tmp_path, override, needle):
    proc = run_cli_here(
        "train",
        f"data.root={grids}",
        "data.labels=labels.csv",
        "data.label_delim=' '",
        *TINY,
        override,
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, needle)


def test_best_thresholds_cut_between_scores_and_leave_labels_without_positives_at_half():
    probs = torch.tensor([[0.9, 0.2], [0.7, 0.1], [0.4, 0.3], [0.2, 0.05]])
    targets = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]])
    assert ml.best_thresholds(probs, targets) == pytest.approx([0.55, 0.5])


@pytest.mark.slow
def test_explain_draws_the_most_probable_labels_with_their_sigmoids(ml_run, grids, tmp_path):
    ckpt = ml_run / "checkpoints" / "best.ckpt"
    image = sorted((grids / "images").iterdir())[0]
    proc = run_cli_here(
        "explain",
        f"ckpt={ckpt}",
        f"input={image}",
        "top_k=2",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'x'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model(ckpt, "cpu")
    top = sigmoid_by_hand(model, [image])[0].topk(2)
    rows = list(csv.DictReader(open(tmp_path / "x" / "explain.csv", encoding="utf-8")))
    assert [r["class"] for r in rows] == [model.class_names[i] for i in top.indices.tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(top.values.tolist(), abs=1e-5)
    cut = dict(zip(model.class_names, model.module.thresholds))
    assert [r["predicted"] for r in rows] == [
        "yes" if float(r["probability"]) >= cut[r["class"]] else "no" for r in rows
    ]


def test_a_multilabel_csv_trained_without_a_delimiter_gets_a_hint(grids, tmp_path):
    # Read as one label per cell, "checks dots" is a class of its own with too few images to split:
    # the hint comes first, before that error.
    proc = run_cli_here(
        "train", f"data.root={grids}", "data.labels=labels.csv", *TINY, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert "hold spaces or separators" in proc.stderr and "data.label_delim=' '" in proc.stderr
