"""Exploration (third session): heads x vectors x C on the letters audit task, 3 seeds, 10% and 20% flips drawn
exactly as bench/audit.py draws them (``noisy_rows``); the fc7 torch head is the audit's earlier default.

    python bench/audit_explore/vectors.py 20; python bench/audit_explore/vectors.py 60   # /tmp/a27/vec-*.npz
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/audit_explore/heads.py         # /tmp/a27/grid.json

Run with one BLAS thread: on the shared 2-core machine OpenBLAS's default threads made each fit ~26x slower.
The earlier torch head (``HeadRecipe(epochs=30, lr=1e-3, l2=0.1)``) is no longer in vggtune; its rows in
bench/results/audit-explore-cpu-2026-12-03-heads-3seeds.json come from the commit before this one.
"""

# ruff: noqa: E402, E702, E731, B023  (exploration script kept as it ran)
import collections
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
import audit as B

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vggtune.inspect.folds import HeadRecipe, fold_indices, out_of_fold
from vggtune.inspect.label_issues import find_label_issues


def prf(f, t):
    tp = len(f & t)
    p = tp / max(1, len(f))
    r = tp / max(1, len(t))
    return p, r, 2 * p * r / max(1e-12, p + r)


def sk_oof(x, y, k, seed, C):
    pp = np.zeros((len(x), y.max() + 1))
    for held in fold_indices(y, k, seed, False):
        tr = np.setdiff1d(np.arange(len(x)), held)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(x[tr], y[tr])
        pp[held] = clf.predict_proba(x[held])
    return pp


res = collections.defaultdict(list)
for train in (20, 60):
    d = np.load(f"/tmp/a27/vec-{train}.npz")
    root = B.WORK / f"data-letters-b-{train}x60"
    classes = list(d["classes"])
    paths = list(d["paths"])
    idx = {p: i for i, p in enumerate(paths)}
    for noise in (0.1, 0.2):
        for seed in (0, 1, 2):
            rows, flips, clean = B.noisy_rows(root, noise, seed)
            y = np.array([classes.index(r[1]) for r in sorted(rows, key=lambda r: idx[r[0]])])
            truth = {idx[p] for p in flips}
            recipes = {
                "fc7 head l2=0.1 (default)": lambda: out_of_fold(d["fc7"], y, 5, 5, HeadRecipe(), seed),
                "conv LR C=1": lambda: sk_oof(d["conv"], y, 5, seed, 1.0),
                "conv LR C=0.1": lambda: sk_oof(d["conv"], y, 5, seed, 0.1),
                "conv LR C=10": lambda: sk_oof(d["conv"], y, 5, seed, 10.0),
                "fc7 LR C=1": lambda: sk_oof(d["fc7"], y, 5, seed, 1.0),
                "conv head l2=0.1": lambda: out_of_fold(d["conv"], y, 5, 5, HeadRecipe(), seed),
            }
            for name, f in recipes.items():
                t = time.perf_counter()
                pp = f()
                s = time.perf_counter() - t
                flag = set(find_label_issues(y, pp).ranked.tolist())
                res[(train, noise, name)].append(prf(flag, truth) + (s,))
            print(
                train,
                noise,
                seed,
                {k[2]: round(v[-1][2], 3) for k, v in res.items() if k[:2] == (train, noise)},
                flush=True,
            )
out = []
for (train, noise, name), v in res.items():
    m = [statistics.mean(c) for c in zip(*v)]
    sd = [statistics.stdev(c) for c in zip(*v)]
    out.append(dict(train=train, noise=noise, recipe=name, p=m[0], r=m[1], f1=m[2], f1_sd=sd[2], secs=m[3], runs=v))
    print(f"{train:3d} {noise:.1f} {name:28s} P {m[0]:.3f} R {m[1]:.3f} F1 {m[2]:.3f}±{sd[2]:.3f} {m[3]:.1f}s")
json.dump(out, open("/tmp/a27/grid.json", "w"), indent=1)
