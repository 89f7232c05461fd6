"""Checks of config values that several concerns share; each failure is one UserError naming the key."""

from __future__ import annotations

from vggtune.core.errors import UserError


def check_positive_int(name: str, value, allow_zero: bool = False) -> int:
    """``value`` if it is a whole number of at least 1 (or 0 with ``allow_zero``), else a UserError naming ``name``."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer of at least {low}, got {value!r}")
    return value


def is_number(value, whole: bool = False) -> bool:
    """An int (``whole``) or an int or float, and not a bool (YAML's ``true`` is not 1 here)."""
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def check_bool(name: str, value) -> bool:
    """``value`` if it is true or false (not 1, "yes" or null), else a UserError naming the key."""
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {value!r}")
    return value
