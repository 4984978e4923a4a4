"""Optional extras that load native libraries (NVDEC's PyNvVideoCodec, nvImageCodec): imported once, and where one
cannot load here, the reason in the caller's own exception type, with the extra to install."""

from __future__ import annotations

import functools
import importlib


@functools.lru_cache(maxsize=None)
def _load(module: str):
    """The module, or the exception its import raised (cached either way: a failed load does not heal in a run)."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (missing, or its libraries fail to load: no driver library)
        return e


def load_extra(module: str, name: str, extra: str, error: type[Exception]):
    """``module`` (the ``extra``'s), or ``error`` saying why ``name`` is not usable here."""
    loaded = _load(module)
    if isinstance(loaded, Exception):
        raise error(f"{name} is not usable ({type(loaded).__name__}: {loaded}); "
                    f"install yolotune[{extra}] on a machine with an NVIDIA driver") from loaded
    return loaded


def extra_available(module: str) -> bool:
    """Whether ``module`` loads here."""
    return not isinstance(_load(module), Exception)
