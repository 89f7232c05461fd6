"""What a config key accepts (:class:`Key`, made of kinds such as :class:`Whole` or :class:`OneOf`), and the one
line that says so when a value does not fit.

A kind knows its values (``accepts``) and says them in words (``describe``): the configuration reference prints
those words in its "accepts" column, and :meth:`Key.check` puts the same words into the error.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vggtune.core.errors import UserError


def is_number(value, whole: bool = False) -> bool:
    """An int (``whole``) or an int or float, and not a bool (YAML's ``true`` is not 1 here)."""
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _bound(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        start = f"above {low}" if low_open else f"from {low}"
        joint = {(True, True): "and below", (True, False): "and up to", (False, True): "to below"}.get(
            (low_open, high_open), "to"
        )
        return f"{start} {joint} {high}"
    if low is not None:
        return f"above {low}" if low_open else f"{low} or more"
    if high is not None:
        return f"below {high}" if high_open else f"{high} or less"
    return ""


@dataclass(frozen=True)
class Whole:
    """A whole number (not a bool), optionally within bounds."""

    low: int | None = None
    high: int | None = None

    def accepts(self, value) -> bool:
        return (
            is_number(value, whole=True)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        )

    def describe(self) -> str:
        bound = _bound(self.low, self.high, False, False)
        return f"a whole number, {bound}" if bound else "a whole number"


@dataclass(frozen=True)
class Number:
    """An int or a float (not a bool), optionally within bounds that may be open (``low_open``: above ``low``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value) -> bool:
        if not is_number(value) or value != value:  # NaN fits no bound
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.low == 0 and self.low_open and self.high is None:
            return "a positive number"
        bound = _bound(self.low, self.high, self.low_open, self.high_open)
        return f"a number, {bound}" if bound else "a number"


@dataclass(frozen=True)
class Flag:
    """true or false: not 1, "yes" or null (OmegaConf's bool nodes would take those, which is why this is ours)."""

    def accepts(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Text:
    """A string (``nonempty``: with something besides spaces)."""

    nonempty: bool = False

    def accepts(self, value) -> bool:
        return isinstance(value, str) and (not self.nonempty or bool(value.strip()))

    def describe(self) -> str:
        return "a non-empty string" if self.nonempty else "a string"


@dataclass(frozen=True)
class OneOf:
    """One of the given values."""

    values: tuple

    def __init__(self, *values) -> None:
        object.__setattr__(self, "values", values)

    def accepts(self, value) -> bool:
        return any(v == value and isinstance(v, bool) == isinstance(value, bool) for v in self.values)

    def describe(self) -> str:
        shown = [show(v) for v in self.values]
        return shown[0] if len(shown) == 1 else f"one of {', '.join(shown)}"


@dataclass(frozen=True)
class Anything:
    """Any value: the key is documented here and checked where it is used (a path, a list, a mapping)."""

    what: str = "any value"

    def accepts(self, value) -> bool:
        return True

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class Either:
    """Any of several kinds: ``Either(OneOf("auto"), Whole(0))`` is auto or a whole number, 0 or more."""

    kinds: tuple

    def __init__(self, *kinds) -> None:
        object.__setattr__(self, "kinds", kinds)

    def accepts(self, value) -> bool:
        return any(k.accepts(value) for k in self.kinds)

    def describe(self) -> str:
        return " or ".join(k.describe() for k in self.kinds)


Kind = Whole | Number | Flag | Text | OneOf | Anything | Either

FLAG, TEXT, ANY = Flag(), Text(), Anything()


def show(value) -> str:
    """A value as it is written on the command line: null, true, 0.5, val/acc, '' ."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and (not value or value != value.strip() or "," in value):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Key:
    """One config key: what it accepts (``kind``, and null if ``null``), what it does (``doc``, the reference's
    text), and an ``example`` override for the error line."""

    kind: Kind
    doc: str = ""
    null: bool = False
    example: str | None = None

    def accepts(self, value) -> bool:
        """Whether ``value`` is one of this key's values."""
        return (value is None and self.null) or (value is not None and self.kind.accepts(value))

    def describe(self) -> str:
        """The accepted values in words, as the reference and the error say them."""
        return self.kind.describe() + (" or null" if self.null else "")

    def check(self, name: str, value):
        """``value`` if this key accepts it, else a UserError: what ``name`` must be, and what it got."""
        if self.accepts(value):
            return value
        detail = ""
        if isinstance(self.kind, OneOf) and isinstance(value, str):
            hint = difflib.get_close_matches(value, [str(v) for v in self.kind.values], n=1)
            detail = f" (did you mean {name}={hint[0]}?)" if hint else ""
        if self.example and not detail:
            detail = f", e.g. {self.example}"
        raise UserError(f"{name} must be {self.describe()}{detail}, got {name}={show(value)}")
