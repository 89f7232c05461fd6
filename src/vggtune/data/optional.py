"""Modules that need an optional extra, imported with a one-line error naming the extra when it is missing."""

from __future__ import annotations

from vggtune.core.errors import UserError


def import_stream():
    """:mod:`vggtune.data.stream`, which needs litdata (the optional extra ``vggtune[stream]``)."""
    try:
        import litdata  # noqa: F401
    except ImportError:
        raise UserError("streaming needs litdata, which is not installed: pip install 'vggtune[stream]'") from None
    from vggtune.data import stream

    return stream
