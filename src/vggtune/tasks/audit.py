"""``vggtune audit``: what is wrong in a labelled data set, found before training on it.

Top to bottom in :func:`run`: the images as ``train`` splits them (same verify, bad-image and
``data.exclude`` rules), every subset; one vector per image from the checkpoint's network (or the
pretrained one), cached; out-of-fold probabilities from K heads on those vectors; cleanlab's
confident learning on them for label issues; content hashes and cosine similarity for duplicates and
leaks across subsets; cleanlab's out-of-distribution score and the files' own sizes for outliers.
Everything is written to the run folder (CSV files, ``report.html``, ``cleaned_labels.csv``); no
file of the user's is moved, renamed or rewritten.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vggtune.core.checks import check_positive_int
from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open
from vggtune.data.datasets import ImageListDataset
from vggtune.data.discovery import DataSplit, discover
from vggtune.data.exclude import apply_exclude
from vggtune.data.feature_cache import cache_key, cached_datasets, weights_identity
from vggtune.data.workers import resolve_workers
from vggtune.inspect.duplicates import exact_pairs, near_pairs
from vggtune.inspect.folds import HeadRecipe, check_folds, out_of_fold
from vggtune.inspect.image_facts import OddRules, all_facts
from vggtune.inspect.label_issues import find_label_issues, import_cleanlab, outlier_scores
from vggtune.model.arch import frozen_trunk, mean_pooled_convs, preprocessing
from vggtune.model.module import VGGClassifier
from vggtune.schema.check import check_value, declared
from vggtune.tasks.audit_files import Findings, write_findings
from vggtune.tasks.runs import report_files, write_skipped
from vggtune.use.inference import LoadedModel, load_model, pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """The ``audit`` keys, checked."""

    folds: int
    vectors: str
    recipe: HeadRecipe
    filter_by: str
    near_duplicate: float
    fix: str
    relabel_above: float
    odd: OddRules
    report_rows: int


def check_settings(audit: DictConfig) -> Settings:
    """The ``audit`` config group as values, or a UserError naming the key that is wrong (as vggtune.schema declares it)."""
    for name in (n for n in declared("audit") if n.startswith("audit.")):
        check_value(name, OmegaConf.select(audit, name.removeprefix("audit.")), task="audit")
    recipe = HeadRecipe(float(audit.c))
    odd = OddRules(int(audit.odd.min_side), float(audit.odd.max_aspect), float(audit.odd.min_std))
    return Settings(
        int(audit.folds),
        str(audit.vectors),
        recipe,
        str(audit.filter_by),
        float(audit.near_duplicate),
        str(audit.fix),
        float(audit.relabel_above),
        odd,
        int(audit.report_rows),
    )


def audit_split(data: DictConfig) -> DataSplit:
    """The data set as ``vggtune train`` splits it (with ``data.exclude`` applied), every subset kept."""
    if data.get("stream"):
        raise UserError(
            "vggtune audit reads image files (it hashes and measures them): pass data.root= or "
            "data.labels= (the folder or CSV the stream was prepared from), not data.stream="
        )
    columns = {k: data.get(k) for k in ("path_column", "label_column", "split_column")}
    split = discover(
        data.root,
        data.val_split,
        data.test_split,
        data.seed,
        data.verify,
        data.on_bad_image,
        data.get("labels"),
        columns,
        data.get("label_delim"),
    )
    return apply_exclude(split, data.get("exclude"))


def load_network(cfg: DictConfig, classes: list[str]) -> tuple[LoadedModel, str, str]:
    """The network whose vectors the heads read, its description, and its identity for the feature cache.

    Without ``ckpt``: ``model.weights`` up to fc7 (any head the file has is not needed: the folds train their own).
    """
    if cfg.ckpt:
        net = load_model(cfg.ckpt, cfg.device)
        if list(net.class_names) != list(classes):
            raise UserError(
                f"{cfg.ckpt} was trained on the classes {', '.join(net.class_names)}, but the data has "
                f"{', '.join(classes)}: audit with a checkpoint of these classes, or leave ckpt out "
                "(the pretrained model.weights)"
            )
        return net, f"checkpoint {cfg.ckpt} ({net.module.hparams['arch']})", weights_identity(str(cfg.ckpt), cfg.seed)
    weights = str(cfg.model.weights)
    if weights.lower() == "none":
        log.warning(
            "model.weights=none: a randomly initialised %s; its vectors mean little (pass model.weights= or ckpt=)",
            cfg.model.arch,
        )
    prep = preprocessing(cfg.model.arch, cfg.data.image_size)
    torch.manual_seed(cfg.seed)  # model.weights=none: the same random network for the same seed (and cache key)
    module = VGGClassifier(cfg.model.arch, classes, weights=weights, preprocessing=prep.to_dict())
    device = pick_device(cfg.device)
    net = LoadedModel(module.to(device).eval(), list(classes), prep, device, Path(weights))
    return net, f"{cfg.model.arch} with weights {weights}", weights_identity(weights, cfg.seed)


def image_vectors(
    net: LoadedModel, split: DataSplit, weights_id: str, cfg: DictConfig, kind: str = "fc7"
) -> np.ndarray:
    """One vector per image, in subset order: ``conv``, the last conv block averaged over its positions (512
    values), or ``fc7``, what the last layer reads (the key train's linear probe uses). Read from the feature
    cache ``data.cache_dir``, or computed once and stored there."""
    arch = str(net.module.hparams.get("arch", cfg.model.arch))
    head = str(net.module.hparams.get("head", "vgg"))
    num_labels = len(split.classes) if split.multilabel else None
    images = {s: ImageListDataset(items, net.transform, num_labels=num_labels) for s, items in split.subsets.items()}
    if kind == "conv":
        key = cache_key(arch, weights_id, net.preprocessing, True, split.subsets, head, pooling="mean")
        trunk = mean_pooled_convs(net.module.model)
    else:
        key = cache_key(arch, weights_id, net.preprocessing, False, split.subsets, head)
        trunk, _ = frozen_trunk(net.module.model, train_fc=False)
    batch_size = check_positive_int("data.batch_size", cfg.data.batch_size)
    stored = cached_datasets(
        cfg.data.cache_dir, key, trunk, images, batch_size, resolve_workers(cfg.data.num_workers), net.device
    )
    return torch.cat([stored[s].tensors[0] for s in split.subsets]).numpy()


def run(cfg: DictConfig) -> dict:
    """The ``vggtune audit`` task; returns the summary it writes to ``audit.json``."""
    import_cleanlab()  # a missing extra fails before any work
    settings = check_settings(cfg.audit)
    split = audit_split(cfg.data)
    items = [(path, label, subset) for subset, pairs in split.subsets.items() for path, label in pairs]
    labels = _label_array(split, [label for _, label, _ in items])
    check_folds(labels, split.classes, settings.folds, split.multilabel)
    net, network, weights_id = load_network(cfg, split.classes)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "Auditing %d images of %d classes (%s) with %s on %s",
        len(items),
        len(split.classes),
        ", ".join(f"{s} {len(v)}" for s, v in split.subsets.items()),
        network,
        net.device,
    )

    start = time.perf_counter()
    vectors = image_vectors(net, split, weights_id, cfg, settings.vectors)
    vectors_s = time.perf_counter() - start
    log.info("Vectors of %d images (%d values each) in %.1f s", *vectors.shape, vectors_s)
    start = time.perf_counter()
    pred_probs = out_of_fold(
        vectors, labels, len(split.classes), settings.folds, settings.recipe, cfg.seed, split.multilabel
    )
    folds_s = time.perf_counter() - start
    log.info(
        "Out-of-fold probabilities: %d folds, a logistic regression (C=%g) each on the %s vectors, %.1f s",
        settings.folds,
        settings.recipe.c,
        settings.vectors,
        folds_s,
    )
    given = [label for _, label, _ in items]
    issues = find_label_issues(given, pred_probs, split.multilabel, settings.filter_by)

    start = time.perf_counter()
    facts = all_facts([path for path, _, _ in items])
    exact = exact_pairs([f.digest for f in facts])
    near = near_pairs(np.stack([f.tiny for f in facts]), settings.near_duplicate, {(p.a, p.b) for p in exact})
    ood, outlier = outlier_scores(vectors)
    findings = Findings(split, items, pred_probs, issues, exact + near, ood, outlier, facts, settings)
    checks_s = time.perf_counter() - start
    summary = {
        "images": len(items),
        "classes": split.classes,
        "data_root": str(split.root),
        "network": network,
        "vectors": settings.vectors,
        "vector_size": int(vectors.shape[1]),
        "folds": settings.folds,
        "head": f"logistic regression, C={settings.recipe.c:g}",
        "filter_by": settings.filter_by,
        "near_duplicate_threshold": settings.near_duplicate,
        "fix": settings.fix,
        "relabel_above": settings.relabel_above,
        "out_of_fold_accuracy": _accuracy(labels, pred_probs, split.multilabel),
        "seconds": {"vectors": round(vectors_s, 2), "folds": round(folds_s, 2), "checks": round(checks_s, 2)},
        "skipped": len(split.skipped),
    }
    with atomic_open(run_dir / "pred_probs.npy", "wb") as f:
        np.save(f, pred_probs.astype(np.float32))
    files = {
        "pred_probs.npy": f"{pred_probs.shape[0]} x {pred_probs.shape[1]} out-of-fold probabilities, rows in "
        "the order of images.csv"
    }
    files.update(write_findings(findings, run_dir, summary))
    write_skipped(run_dir, [(str(b.path), b.reason) for b in split.skipped], csv=split.layout.startswith("csv"))
    _log_summary(summary)
    report_files(run_dir, files)
    return summary


def _label_array(split: DataSplit, labels: list) -> np.ndarray:
    """Class indices (N,), or multi-label, a multi-hot (N, classes) array."""
    if not split.multilabel:
        return np.asarray(labels, dtype=np.int64)
    out = np.zeros((len(labels), len(split.classes)), dtype=np.int64)
    for i, label in enumerate(labels):
        out[i, list(label)] = 1
    return out


def _accuracy(labels: np.ndarray, pred_probs: np.ndarray, multilabel: bool) -> float:
    """How often the out-of-fold prediction agrees with the given label (multi-label: per label, at 0.5)."""
    if multilabel:
        return float(((pred_probs >= 0.5) == labels.astype(bool)).mean())
    return float((pred_probs.argmax(1) == labels).mean())


def _log_summary(summary: dict) -> None:
    counts = summary["counts"]
    log.info(
        "Found: %d likely label errors, %d duplicate pairs (%d across subsets, %d with different labels), "
        "%d outliers or odd images; out-of-fold accuracy %.3f against the given labels",
        counts["label_issues"],
        counts["duplicate_pairs"],
        counts["leaks"],
        counts["label_conflicts"],
        counts["outliers"],
        summary["out_of_fold_accuracy"],
    )
