"""``data.balance=loss``: each class's weight in the training loss."""

from __future__ import annotations

from collections.abc import Mapping

from vggtune.core.checks import is_number
from vggtune.core.errors import UserError


def loss_weights(names: list[str], counts: dict[str, int], given: list | Mapping | None) -> list[float]:
    """``given`` as it is (a list in class order, or a mapping by class name), else n / (classes x images of
    the class) from the training ``counts``."""
    if given is None:
        total = sum(counts.values())
        return [total / (len(names) * counts[name]) for name in names]
    if isinstance(given, Mapping):
        if set(given) != set(names):
            raise UserError(
                f"data.class_weights names {', '.join(map(str, given))}, but the classes are "
                f"{', '.join(names)}: give one weight per class"
            )
        weights = [given[name] for name in names]
    else:
        weights = list(given)
    if len(weights) != len(names) or not all(is_number(w) and w > 0 for w in weights):
        raise UserError(
            f"data.class_weights must be {len(names)} positive numbers (one per class: {', '.join(names)}), got {given}"
        )
    return [float(w) for w in weights]
