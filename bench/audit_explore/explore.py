"""Exploration: OOF recipes x cleanlab filters x features, on cached vectors (not the committed bench)."""
# ruff: noqa: E402  (exploration script kept as it ran: imports follow the sys.path and warnings set-up)

import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "/work/wt-audit2/bench")
import audit as B
import transfer

warnings.filterwarnings("ignore")
import logging

logging.disable(logging.WARNING)
torch.set_num_threads(1)
import cleanlab.count
import cleanlab.filter
from sklearn.linear_model import LogisticRegression

from vggtune.inspect.folds import HeadRecipe, in_sample, out_of_fold
from vggtune.inspect.label_issues import by_loss

WORK = B.WORK
weights = transfer.pretrain(WORK, "letters-a", B.ARCH, B.SIZE)
OUT = Path("/tmp/audit2")


def vectors(train):
    f = OUT / f"vec-{train}.npz"
    if f.exists():
        d = np.load(f, allow_pickle=True)
        return {k: d[k] for k in d.files}
    root = transfer.write_split(WORK / f"data-letters-b-{train}x60", "letters-b", train, 60)
    rows, flips, clean = B.noisy_rows(root, 0.0, 0)
    labels = B._write_labels(OUT / f"clean-{train}.csv", clean)
    cfg = B._compose(
        "audit",
        [
            f"data.root={root}",
            f"data.labels={labels}",
            f"model={B.ARCH}",
            f"model.weights={weights}",
            f"data.image_size={B.SIZE}",
            "device=cpu",
            f"paths.run_dir={OUT}/run",
            f"data.cache_dir={OUT}/cache",
        ],
    )
    from vggtune.tasks.audit import audit_split, image_vectors, load_network

    split = audit_split(cfg.data)
    net, _, wid = load_network(cfg, split.classes)
    fc7 = image_vectors(net, split, wid, cfg)
    from vggtune.data.datasets import ImageListDataset

    items = [it for s in split.subsets for it in split.subsets[s]]
    ds = ImageListDataset(items, net.transform)
    m = net.module.model
    conv, fc6 = [], []
    with torch.no_grad():
        for xb, _ in torch.utils.data.DataLoader(ds, batch_size=64):
            c = m.features(xb)
            conv.append(c.flatten(1))
            fc6.append(m.classifier[:3](torch.flatten(m.avgpool(c), 1)))
    paths = [Path(p).relative_to(root).as_posix() for p, _ in items]
    d = dict(
        fc7=fc7,
        conv=torch.cat(conv).numpy(),
        fc6=torch.cat(fc6).numpy(),
        paths=np.array(paths),
        y=np.array([lab for _, lab in items]),
        classes=np.array(split.classes),
    )
    np.savez(f, **d)
    return d


def prf(flag, truth):
    tp = len(flag & truth)
    p = tp / max(1, len(flag))
    r = tp / max(1, len(truth))
    return [p, r, 2 * p * r / max(1e-12, p + r), len(flag)]


def skl_cv(x, y, folds, seed, C):
    xs = (x - x.mean(0)) / x.std(0).clip(1e-6)
    return cleanlab.count.estimate_cv_predicted_probabilities(
        xs, y, clf=LogisticRegression(C=C, max_iter=1000), cv_n_folds=folds, seed=seed
    )


FILTERS = ["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"]
res = []
train = int(sys.argv[1])
seeds = [int(s) for s in sys.argv[2].split(",")]
noises = [float(n) for n in sys.argv[3].split(",")]
d = vectors(train)
classes = list(d["classes"])
n = len(d["y"])
for seed, noise in itertools.product(seeds, noises):
    rng = __import__("random").Random(f"{seed}/{noise}")
    clean_y = d["y"].astype(int)
    subset = np.array([p.split("/")[0] for p in d["paths"]])
    tr = [i for i in range(n) if subset[i] == "train"]
    flips = set(rng.sample(tr, round(noise * len(tr))))
    y = clean_y.copy()
    for i in sorted(flips):  # not the bench's exact draw order; fine for exploration
        y[i] = rng.choice([c for c in range(len(classes)) if c != clean_y[i]])
    truth = {int(i) for i in flips}
    recipes = {}
    grid = [
        ("fc7", "head", 5, 0.1),
        ("conv", "head", 5, 0.1),
        ("fc7", "head", 10, 0.1),
        ("conv", "head", 10, 0.1),
        ("fc7", "head", 5, 1.0),
        ("conv", "head", 5, 1.0),
        ("fc7", "ens3", 5, 0.1),
        ("conv", "ens3", 5, 0.1),
        ("conv", "sk", 5, 1.0),
        ("fc7", "sk", 5, 1.0),
        ("conv", "sk", 5, 0.01),
    ]
    for feat, kind, folds, l2 in grid:
        x = d[feat]
        t = time.perf_counter()
        if kind == "head":
            pp = out_of_fold(x, y, len(classes), folds, HeadRecipe(30, 1e-3, l2, 64), seed)
        elif kind == "ens3":
            pp = np.mean(
                [
                    out_of_fold(x, y, len(classes), folds, HeadRecipe(30, 1e-3, l2, 64), seed + 1000 * r)
                    for r in range(3)
                ],
                0,
            )
        else:
            pp = skl_cv(x, y, folds, seed, l2)
        recipes[f"{feat}/{kind} k{folds} {'C' if kind == 'sk' else 'l2'}={l2}"] = (pp, time.perf_counter() - t)
        print(feat, kind, folds, l2, f"{time.perf_counter() - t:.1f}s", flush=True)
    for name, (pp, secs) in recipes.items():
        acc = float((pp.argmax(1) == clean_y).mean())
        acc_given = float((pp.argmax(1) == y).mean())
        for fb in FILTERS:
            flag = set(np.flatnonzero(cleanlab.filter.find_label_issues(y, pp, filter_by=fb)).tolist())
            res.append(
                dict(
                    train=train,
                    seed=seed,
                    noise=noise,
                    recipe=name,
                    filter=fb,
                    prf=prf(flag, truth),
                    acc_true=acc,
                    secs=secs,
                    train_flag=len([i for i in flag if subset[i] == "train"]),
                )
            )
    # in-sample loss (count = default audit's)
    base = [
        r
        for r in res
        if r["seed"] == seed
        and r["noise"] == noise
        and r["recipe"] == "fc7/head k5 l2=0.1"
        and r["filter"] == "prune_by_noise_rate"
    ][0]
    ins = in_sample(d["fc7"], y, len(classes), HeadRecipe(30, 1e-3, 0.1, 64), seed)
    res.append(
        dict(
            train=train,
            seed=seed,
            noise=noise,
            recipe="in-sample loss fc7",
            filter="top-count",
            prf=prf(set(by_loss(y, ins, base["prf"][3]).tolist()), truth),
        )
    )
    np.save(OUT / f"flips-{train}-{seed}-{noise}.npy", np.array(sorted(truth)))
    print(seed, noise, "done", flush=True)
    json.dump(res, open(OUT / f"explore-{train}.json", "w"))
json.dump(res, open(OUT / f"explore-{train}.json", "w"))
