"""Exploration (third session): which images to flag from the same out-of-fold probabilities (conv vectors,
logistic heads), 3 seeds, 10% and 20% flips as bench/audit.py draws them: cleanlab's filters beside taking
cleanlab's count of the images of lowest self-confidence (now ``audit.filter_by=lowest_self_confidence``).

    OMP_NUM_THREADS=1 python bench/audit_explore/filters.py     # after vectors.py 20 and 60
"""

# ruff: noqa: E402, E702, E731  (exploration script kept as it ran)
import collections
import logging
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
import audit as B

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
import cleanlab.filter

from vggtune.inspect.folds import HeadRecipe, in_sample, out_of_fold
from vggtune.inspect.label_issues import by_loss, find_label_issues


def prf(f, t):
    tp = len(f & t)
    p = tp / max(1, len(f))
    r = tp / max(1, len(t))
    return round(2 * p * r / max(1e-12, p + r), 3)


res = collections.defaultdict(list)
for train in (20, 60):
    d = np.load(f"/tmp/a27/vec-{train}.npz")
    root = B.WORK / f"data-letters-b-{train}x60"
    classes = list(d["classes"])
    paths = list(d["paths"])
    idx = {p: i for i, p in enumerate(paths)}
    sub = np.array([p.split("/")[0] for p in paths])
    for noise in (0.1, 0.2):
        for seed in (0, 1, 2):
            rows, flips, clean = B.noisy_rows(root, noise, seed)
            y = np.array([classes.index(r[1]) for r in sorted(rows, key=lambda r: idx[r[0]])])
            truth = {idx[p] for p in flips}
            x = d["conv"]
            oof = out_of_fold(x, y, 5, 5, HeadRecipe(), seed)
            ins = in_sample(x, y, 5, HeadRecipe(), seed)
            cl = set(find_label_issues(y, oof, filter_by="prune_by_noise_rate").ranked.tolist())
            k = len(cl)
            sc = oof[np.arange(len(y)), y]
            r = {
                "oof cleanlab": prf(cl, truth),
                "count": k,
                "oof self-conf top-k": prf(set(np.argsort(sc)[:k].tolist()), truth),
                "in-sample loss top-k": prf(set(by_loss(y, ins, k).tolist()), truth),
                "oof both": prf(
                    set(np.flatnonzero(cleanlab.filter.find_label_issues(y, oof, filter_by="both")).tolist()), truth
                ),
                "cl low_self_confidence": prf(
                    set(
                        np.flatnonzero(
                            cleanlab.filter.find_label_issues(y, oof, filter_by="low_self_confidence")
                        ).tolist()
                    ),
                    truth,
                ),
                "cl low_normalized_margin": prf(
                    set(
                        np.flatnonzero(
                            cleanlab.filter.find_label_issues(y, oof, filter_by="low_normalized_margin")
                        ).tolist()
                    ),
                    truth,
                ),
                "n lsc": int(
                    len(np.flatnonzero(cleanlab.filter.find_label_issues(y, oof, filter_by="low_self_confidence")))
                ),
                "oof pred!=given": prf(set(np.flatnonzero(oof.argmax(1) != y).tolist()), truth),
                "flagged in val": int(sum(sub[i] == "val" for i in cl)),
                "oof top-|flips|": prf(set(np.argsort(sc)[: len(truth)].tolist()), truth),
            }
            for kk, v in r.items():
                res[(train, noise, kk)].append(v)
            print(train, noise, seed, r, flush=True)
for k, v in res.items():
    print(k, round(statistics.mean(v), 3))
