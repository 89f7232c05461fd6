"""Exploration: out-of-fold recipes x cleanlab filters on the vectors explore.py saved (python focus.py vec-20.npz out.json)."""

# ruff: noqa: E402  (exploration script kept as it ran: imports follow the warnings set-up)
import json
import random
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
import cleanlab.count
import cleanlab.filter
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

d = np.load(sys.argv[1])
train = sys.argv[1]
y0 = d["y"].astype(int)
sub = np.array([p.split("/")[0] for p in d["paths"]])
tr = [i for i in range(len(y0)) if sub[i] == "train"]
out = []
for noise in (0.1, 0.2):
    for seed in (0, 1, 2):
        rng = random.Random(f"{seed}/{noise}")
        flips = set(rng.sample(tr, round(noise * len(tr))))
        y = y0.copy()
        for i in sorted(flips):
            y[i] = rng.choice([c for c in range(5) if c != y0[i]])
        for name, feat, clf in [
            ("conv std LR C=1 it100", "conv", make_pipeline(StandardScaler(), LogisticRegression(C=1.0))),
            (
                "conv std LR C=1 it1000",
                "conv",
                make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)),
            ),
            (
                "conv std LR C=0.1 it1000",
                "conv",
                make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)),
            ),
            ("conv raw cleanlab default", "conv", LogisticRegression(solver="lbfgs")),
            ("fc7 raw cleanlab default", "fc7", LogisticRegression(solver="lbfgs")),
        ]:
            t = time.perf_counter()
            pp = cleanlab.count.estimate_cv_predicted_probabilities(d[feat], y, clf=clf, cv_n_folds=5, seed=seed)
            secs = time.perf_counter() - t
            for fb in ("prune_by_noise_rate", "both", "prune_by_class", "confident_learning"):
                f = set(np.flatnonzero(cleanlab.filter.find_label_issues(y, pp, filter_by=fb)).tolist())
                tp = len(f & flips)
                p = tp / max(1, len(f))
                r = tp / len(flips)
                out.append((noise, seed, name, fb, p, r, 2 * p * r / max(1e-9, p + r), secs))
            print(noise, seed, name, f"{secs:.1f}s", [round(o[6], 3) for o in out[-4:]], flush=True)
json.dump(out, open(sys.argv[2], "w"))
