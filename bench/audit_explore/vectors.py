"""Exploration: both kinds of the audit's vectors (``audit.vectors``: conv and fc7) for the letters audit task
with ``train`` images a class, saved for heads.py (``python vectors.py 20`` -> /tmp/a27/vec-20.npz)."""

import logging
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
import audit as B  # noqa: E402
import transfer  # noqa: E402

from vggtune.tasks.audit import audit_split, image_vectors, load_network  # noqa: E402

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
OUT = Path("/tmp/a27")
OUT.mkdir(exist_ok=True)
train = int(sys.argv[1])
weights = transfer.pretrain(B.WORK, "letters-a", B.ARCH, B.SIZE)
root = transfer.write_split(B.WORK / f"data-letters-b-{train}x60", "letters-b", train, 60)
_, _, clean = B.noisy_rows(root, 0.0, 0)
labels = B._write_labels(OUT / f"clean-{train}.csv", clean)
overrides = [f"data.root={root}", f"data.labels={labels}", f"model={B.ARCH}", f"model.weights={weights}"]
cfg = B._compose("audit", [*overrides, f"data.image_size={B.SIZE}", "device=cpu", f"data.cache_dir={OUT}/cache"])
split = audit_split(cfg.data)
net, _, wid = load_network(cfg, split.classes)
items = [it for s in split.subsets for it in split.subsets[s]]
np.savez(
    OUT / f"vec-{train}.npz",
    fc7=image_vectors(net, split, wid, cfg, "fc7"),
    conv=image_vectors(net, split, wid, cfg, "conv"),
    paths=np.array([Path(p).relative_to(root).as_posix() for p, _ in items]),
    y=np.array([label for _, label in items]),
    classes=np.array(split.classes),
)
