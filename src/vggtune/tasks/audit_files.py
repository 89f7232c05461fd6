"""What ``vggtune audit`` writes: one CSV per finding, a per-class summary, ``cleaned_labels.csv`` and the report."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vggtune.data.discovery import DataSplit
from vggtune.inspect.audit_report import ReportRow, write_report
from vggtune.inspect.duplicates import Pair, pair_flags
from vggtune.inspect.image_facts import ImageFacts, OddRules
from vggtune.inspect.label_issues import LabelIssues
from vggtune.tasks.runs import write_csv, write_json

log = logging.getLogger(__name__)
SUBSET_ORDER = {"train": 0, "all": 0, "val": 1, "test": 2}


class AuditSettings(Protocol):
    """The keys of :class:`vggtune.tasks.audit.Settings` that the files read (that module imports this one)."""

    @property
    def fix(self) -> str: ...
    @property
    def odd(self) -> OddRules: ...
    @property
    def relabel_above(self) -> float: ...
    @property
    def report_rows(self) -> int: ...


@dataclass
class Findings:
    """Everything the checks found, over ``items`` (path, label, subset) in the order of ``pred_probs``."""

    split: DataSplit
    items: list[tuple[Path, int | tuple[int, ...], str]]
    pred_probs: np.ndarray
    issues: LabelIssues
    pairs: list[Pair]
    ood: np.ndarray
    outlier: np.ndarray
    facts: list[ImageFacts]
    settings: AuditSettings  # tasks.audit.Settings

    def path(self, i: int) -> str:
        """Image ``i``'s path as the CSV files give it: relative to the data root when it is under it."""
        p, root = self.items[i][0], self.split.root
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else p.as_posix()

    def label(self, i: int) -> str:
        return self.split.label_text(self.items[i][1])

    def suggested(self, i: int) -> str:
        return self.split.label_text(self.issues.suggested[i])

    def suggested_prob(self, i: int) -> float:
        """The probability of the suggested label (multi-label: the mean of the suggested labels', or, when
        none is suggested, the probability that the likeliest label is absent)."""
        s, probs = self.issues.suggested[i], self.pred_probs[i]
        if not isinstance(s, tuple):
            return float(probs[s])
        return float(probs[list(s)].mean()) if s else float(1 - probs.max())

    def odd_reasons(self, i: int) -> list[str]:
        reasons = self.settings.odd.reasons(self.facts[i])
        return (["far from every class (cleanlab out-of-distribution score)"] if self.outlier[i] else []) + reasons


def write_findings(f: Findings, run_dir: Path, summary: dict) -> dict[str, str]:
    """Write every file of the audit into ``run_dir``; fill ``summary['counts']``; return what each file holds."""
    n = len(f.items)
    subsets = [s for _, _, s in f.items]
    labels = [label for _, label, _ in f.items]
    write_csv(
        run_dir / "images.csv", ["path", "subset", "label"], [(f.path(i), subsets[i], f.label(i)) for i in range(n)]
    )
    issue_rows = [
        (
            rank + 1,
            f.path(i),
            subsets[i],
            f.label(i),
            f.suggested(i),
            f"{f.suggested_prob(i):.4f}",
            f"{f.issues.quality[i]:.4f}",
        )
        for rank, i in enumerate(f.issues.ranked)
    ]
    write_csv(
        run_dir / "label_issues.csv",
        ["rank", "path", "subset", "given", "suggested", "suggested_prob", "score"],
        issue_rows,
    )
    pair_rows = []
    for p in f.pairs:
        leak, conflict = pair_flags(p, subsets, labels)
        pair_rows.append(
            (
                p.kind,
                f"{p.similarity:.4f}",
                f.path(p.a),
                subsets[p.a],
                f.label(p.a),
                f.path(p.b),
                subsets[p.b],
                f.label(p.b),
                int(leak),
                int(conflict),
            )
        )
    # leaks and label conflicts first: they are what to act on
    pair_rows.sort(key=lambda r: (-(r[8] + r[9]), r[0] != "exact", -float(r[1])))
    write_csv(
        run_dir / "duplicates.csv",
        [
            "kind",
            "similarity",
            "path_a",
            "subset_a",
            "label_a",
            "path_b",
            "subset_b",
            "label_b",
            "leak",
            "label_conflict",
        ],
        pair_rows,
    )
    odd = [i for i in np.argsort(f.ood, kind="stable") if f.odd_reasons(i)]
    outlier_rows = [
        (
            f.path(i),
            subsets[i],
            f.label(i),
            "; ".join(f.odd_reasons(i)),
            f"{f.ood[i]:.4f}",
            f.facts[i].width,
            f.facts[i].height,
            f"{f.facts[i].grey_std:.1f}",
        )
        for i in odd
    ]
    write_csv(
        run_dir / "outliers.csv",
        ["path", "subset", "label", "reasons", "ood_score", "width", "height", "grey_std"],
        outlier_rows,
    )
    class_rows = _class_rows(f, odd)
    write_csv(
        run_dir / "classes.csv", ["class", "images", "suspected_errors", "in_duplicate_pairs", "outliers"], class_rows
    )
    dropped, relabelled = _write_cleaned(f, run_dir / "cleaned_labels.csv")
    summary["counts"] = {
        "label_issues": len(issue_rows),
        "duplicate_pairs": len(pair_rows),
        "exact_pairs": sum(r[0] == "exact" for r in pair_rows),
        "leaks": sum(r[8] for r in pair_rows),
        "label_conflicts": sum(r[9] for r in pair_rows),
        "outliers": len(outlier_rows),
        "relabelled": relabelled,
        "dropped": dropped,
    }
    summary["per_class"] = {
        r[0]: dict(zip(("images", "suspected_errors", "in_duplicate_pairs", "outliers"), r[1:])) for r in class_rows
    }
    write_json(run_dir / "audit.json", summary)
    write_report(run_dir / "report.html", summary, *_report_rows(f, odd))
    return {
        "report.html": "open it in a browser (no server needed): label issues, duplicates, outliers, per class",
        "label_issues.csv": f"{len(issue_rows)} likely wrong labels, most likely first (score: the label's quality, "
        "low = likely wrong); use it as data.exclude= to leave them out",
        "duplicates.csv": f"{len(pair_rows)} pairs of exact or near copies; leak = in different subsets",
        "outliers.csv": f"{len(outlier_rows)} images far from every class, tiny, extreme in aspect or near-constant",
        "classes.csv": "per class: images, suspected errors, images in duplicate pairs, outliers",
        "cleaned_labels.csv": f"every image with its label after the audit ({relabelled} relabelled, {dropped} marked "
        "drop=1): train on it with data.labels=",
        "images.csv": "path, subset, label of each row of pred_probs.npy",
        "audit.json": "the network, vectors, folds, head, counts and timings",
    }


def _class_rows(f: Findings, odd: list[int]) -> list[tuple]:
    def per_class(indices) -> Counter:
        counts: Counter[int] = Counter()
        for i in indices:
            label = f.items[i][1]
            counts.update(label if isinstance(label, tuple) else (label,))
        return counts

    in_pairs = {i for p in f.pairs for i in (p.a, p.b)}
    images, errors, dups, outs = (
        per_class(range(len(f.items))),
        per_class(f.issues.ranked),
        per_class(in_pairs),
        per_class(odd),
    )
    return [(name, images[c], errors[c], dups[c], outs[c]) for c, name in enumerate(f.split.classes)]


def _write_cleaned(f: Findings, path: Path) -> tuple[int, int]:
    """Every image with its label after the audit. A likely error takes the suggested label (``audit.fix=relabel``),
    is marked ``drop=1`` (``drop``), or (``auto``) takes it when the out-of-fold probability of the suggestion is at
    least ``audit.relabel_above`` and is dropped otherwise: a confident suggestion is nearly always the true label, an
    unsure one often marks a hard but rightly labelled image, which relabelling would make wrong (docs/audit.md).
    The val/test copy of an exact duplicate of another subset's image is always marked ``drop=1``.
    ``data.labels=`` reads the file as it is, the split column included."""
    fix, above = f.settings.fix, f.settings.relabel_above
    reason, relabel, drop = {}, set(), set()
    for i in (int(i) for i in f.issues.ranked):
        reason[i] = f"label issue (score {f.issues.quality[i]:.3g}, suggested {f.suggested(i)})"
        confident = f.suggested_prob(i) >= above
        if fix == "relabel" or (fix == "auto" and confident):
            relabel.add(i)
        else:
            drop.add(i)
            if fix == "auto":
                reason[i] += f"; dropped: the suggestion's probability {f.suggested_prob(i):.2f} < {above}"
    subsets = [s for _, _, s in f.items]
    for p in f.pairs:
        if p.kind == "exact" and subsets[p.a] != subsets[p.b]:
            later = max((p.a, p.b), key=lambda i: SUBSET_ORDER.get(subsets[i], 3))
            other = p.b if later == p.a else p.a
            drop.add(later)
            reason[later] = "; ".join(
                filter(None, [reason.get(later), f"exact copy of {f.path(other)} ({subsets[other]})"])
            )
    relabel = {i for i in relabel - drop if f.issues.suggested[i] != f.items[i][1]}
    rows = []
    for i, (_, _, subset) in enumerate(f.items):
        label = f.suggested(i) if i in relabel else f.label(i)
        rows.append((f.path(i), label, subset, int(i in drop), f.label(i), reason.get(i, "")))
    write_csv(path, ["path", "label", "subset", "drop", "given_label", "reason"], rows)
    return len(drop), len(relabel)


def _report_rows(
    f: Findings, odd: list[int]
) -> tuple[list[ReportRow], list[tuple[ReportRow, ReportRow, str]], list[ReportRow]]:
    limit = f.settings.report_rows
    subsets = [s for _, _, s in f.items]

    def row(i: int, note: str) -> ReportRow:
        return ReportRow(f.items[i][0], f.path(i), subsets[i], f.label(i), note)

    issues = [
        row(i, f"suggested {f.suggested(i)} (p={f.suggested_prob(i):.2f}), score {f.issues.quality[i]:.3g}")
        for i in f.issues.ranked[:limit]
    ]
    pairs = []
    for p in sorted(f.pairs, key=lambda p: (-sum(pair_flags(p, subsets, [x[1] for x in f.items])), -p.similarity))[
        :limit
    ]:
        leak, conflict = pair_flags(p, subsets, [x[1] for x in f.items])
        flags = ", ".join(filter(None, ["leak across subsets" if leak else "", "different labels" if conflict else ""]))
        pairs.append(
            (row(p.a, ""), row(p.b, ""), f"{p.kind}, cosine {p.similarity:.3f}" + (f": {flags}" if flags else ""))
        )
    outliers = [row(i, "; ".join(f.odd_reasons(i)) + f", OOD score {f.ood[i]:.3f}") for i in odd[:limit]]
    return issues, pairs, outliers
