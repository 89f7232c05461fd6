"""HTTP requests that read the proxy settings (``HTTP(S)_PROXY``, ``NO_PROXY``) as they are when they are made.

``urllib.request.urlopen`` builds one opener on its first call in a process and keeps it, and that
opener's ``ProxyHandler`` read the environment once, at that moment. A proxy set or unset later (a
notebook between two calls, a second ``vggtune`` call in one process) would then be ignored, and a proxy
gone since would refuse every request: issue 29, where a test's dead proxy reached the MLflow check of
a later test. torch.hub's download goes through ``urlopen``; MLflow's client (requests) reads the
environment on every request already.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def fresh_opener() -> urllib.request.OpenerDirector:
    """An opener whose proxies are the environment's now (``build_opener`` reads them when it is called)."""
    return urllib.request.build_opener()


@contextmanager
def proxies_as_now() -> Iterator[None]:
    """Within the block, ``urlopen`` (torch.hub's download) uses the environment's proxies as they are now,
    and leaves no opener cached behind it. An opener the user installed (``install_opener``) is kept."""
    installed = urllib.request._opener  # type: ignore[attr-defined]  # private (not in typeshed): the only way to see what urlopen has cached
    if installed is not None:
        yield
        return
    urllib.request.install_opener(fresh_opener())
    try:
        yield
    finally:
        urllib.request.install_opener(None)
