"""Duplicate images: the same file content twice (exact), or two images whose vectors nearly coincide (near).

The near-copy vector is each image's 16 x 16 grey copy less the data set's mean one
(:mod:`vggtune.inspect.image_facts`), not the network's: a resized or re-encoded copy keeps it, while
fc7 vectors of the demo's network put distinct letters closer than copies (a median nearest distinct image
at cosine 0.999, a resized JPEG copy at 0.98-0.99; measured on bench/audit.py's letters). It finds copies,
not crops or mirror images.

A pair matters when its two images sit in different subsets (a copy of a training image in val or
test makes validation look better than it is) or carry different labels (one of them is wrong).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pair:
    """Images ``a`` < ``b`` (indices), how they match (``exact`` or ``near``) and their cosine similarity."""

    a: int
    b: int
    kind: str
    similarity: float


def exact_pairs(digests: list[str]) -> list[Pair]:
    """Every pair of images with the same content hash (similarity 1)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        groups[digest].append(i)
    return [
        Pair(a, b, "exact", 1.0)
        for members in groups.values()
        if len(members) > 1
        for k, a in enumerate(members)
        for b in members[k + 1 :]
    ]


def near_pairs(
    vectors: np.ndarray, threshold: float, skip: AbstractSet[tuple[int, int]] = frozenset(), block: int = 1024
) -> list[Pair]:
    """Pairs whose vectors have a cosine similarity of at least ``threshold``, most similar first; ``skip``
    holds (a, b) pairs already known (the exact ones). Blocks of ``block`` rows bound the memory to
    ``block x N`` similarities."""
    vectors = vectors - vectors.mean(axis=0)  # what all images share (a grey background) says nothing
    unit = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    unit = unit.astype(np.float32)
    found = []
    for start in range(0, len(unit), block):
        sims = unit[start : start + block] @ unit.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            a = start + r
            if c > a and (a, c) not in skip:
                found.append(Pair(a, c, "near", float(min(1.0, sims[r, c]))))
    return sorted(found, key=lambda p: -p.similarity)


def pair_flags(pair: Pair, subsets: list[str], labels: list) -> tuple[bool, bool]:
    """(leak: the two images are in different subsets, conflict: they carry different labels)."""
    return subsets[pair.a] != subsets[pair.b], labels[pair.a] != labels[pair.b]
