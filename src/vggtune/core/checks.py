"""Checks of config values that several concerns share; each failure is one UserError naming the key."""

from __future__ import annotations

from vggtune.core.errors import UserError

PROGRESS_MODES = ("auto", "bar", "plain")  # callbacks.progress_bar.mode


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


def check_progress_options(mode: str, refresh_seconds: float, every_n_steps: int) -> None:
    """One line naming the key, for a value that the progress callback cannot use."""
    if mode not in PROGRESS_MODES:
        raise UserError(
            f"callbacks.progress_bar.mode={mode} is not a mode: choose auto (a bar on a terminal, "
            "plain lines otherwise), bar or plain"
        )
    if not is_number(refresh_seconds) or not refresh_seconds >= 0:
        raise UserError(
            f"callbacks.progress_bar.refresh_seconds must be a number of seconds, 0 or more, got {refresh_seconds!r}"
        )
    if not is_number(every_n_steps, whole=True) or every_n_steps < 1:
        raise UserError(
            f"callbacks.progress_bar.every_n_steps must be a whole number of steps, 1 or more, got {every_n_steps!r}"
        )
