"""vggtune: fine-tune ImageNet-pretrained VGG networks on your own class folders.

``vggtune.train`` and ``vggtune.load`` (the Python API, :mod:`vggtune.api`) are imported on first use,
so that ``import vggtune`` and the command line's start stay free of torch, Lightning and Hydra.
"""

__version__ = "0.2.0"

_API = ("train", "load", "Run", "Model", "Explanation")


def __getattr__(name: str):
    # PEP 562: the API module (and what it imports) loads when one of its names is first asked for.
    if name in _API:
        from vggtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'vggtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
