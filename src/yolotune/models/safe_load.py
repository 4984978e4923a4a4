"""Checkpoints are pickles, and unpickling can run any code the file names: a .pt is read by PyTorch's weights-only
unpickler first, which builds only tensors, containers and the classes allowed here (torch and Ultralytics network
modules, a few namespaces and NumPy scalars), and refuses everything else before it runs. Only a file that passes
is handed to Ultralytics' own loader. ``trust=True`` (``--trust-model``) skips the check for files the user vouches for.
"""

from __future__ import annotations

import importlib
import pickletools
import re
import zipfile
from pathlib import Path

from yolotune.models.spec import ModelLoadError

# Module prefixes whose torch.nn.Module subclasses a detection checkpoint may hold (its layers).
_MODULE_PREFIXES = ("torch.nn.", "ultralytics.nn.")
# Other globals found in Ultralytics checkpoints: plain data, nothing that runs.
_ALLOWED_NAMES = {
    "collections.OrderedDict", "collections.defaultdict", "builtins.set", "builtins.frozenset", "builtins.slice",
    "types.SimpleNamespace", "argparse.Namespace", "ultralytics.utils.IterableSimpleNamespace",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "datetime.datetime",
}
_TRUST_HINT = "if you trust the file's origin, load it with --trust-model (Python: trust_model=True)"
_MAX_ROUNDS = 256  # distinct globals a legacy checkpoint may name, found one refusal at a time


def check_checkpoint(path: str | Path) -> None:
    """Raise ModelLoadError unless ``path`` unpickles with PyTorch's weights-only unpickler and the allowed classes
    alone. Nothing the file names outside them is imported or called."""
    import torch

    path = str(path)
    # torch's own globals (tensor rebuilders, storages) are the weights-only unpickler's to judge
    names = {n for n in _globals_in(path) if _allowed(n) or not n.startswith("torch.")}
    refused = sorted(n for n in names if not _allowed(n))
    if refused:
        raise ModelLoadError(f"{path}: refused: loading it would call {', '.join(refused[:5])}, which a model "
                             f"checkpoint never needs (a planted or tampered file?); {_TRUST_HINT}")
    allowed = {n: _resolve(n) for n in names}
    for _ in range(_MAX_ROUNDS):
        try:
            with torch.serialization.safe_globals(list(allowed.values())):
                torch.load(path, map_location="cpu", weights_only=True)
            return
        except Exception as e:  # noqa: BLE001  (every refusal or damage means: not loaded safely)
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            name = found.group(1) if found else None
            if name is None or name in allowed or not _allowed(name):
                reason = f"it would call {name}, which a model checkpoint never needs" if name and not _allowed(name) \
                    else _first_line(e)
                raise ModelLoadError(f"{path}: cannot be loaded safely ({reason}); {_TRUST_HINT}") from None
            allowed[name] = _resolve(name)
    raise ModelLoadError(f"{path}: names more than {_MAX_ROUNDS} classes; {_TRUST_HINT}")


def _globals_in(path: str) -> set[str]:
    """The module.name of every global the file's pickles import, read without unpickling them."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pickles = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        else:
            pickles = [Path(path).read_bytes()]
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"{path}: cannot read it ({e})") from None
    if not pickles or not all(_is_pickle(data) for data in pickles):
        raise ModelLoadError(f"{path}: not a PyTorch checkpoint (a corrupt file, or another format)")
    names: set[str] = set()
    for data in pickles:
        names |= _pickle_globals(data)
    # protocol 2 spells Python 3's modules by their Python 2 names
    return {n.replace("__builtin__.", "builtins.", 1) if n.startswith("__builtin__.") else n for n in names}


def _is_pickle(data: bytes) -> bool:
    """Whether ``data`` starts with one whole pickle (a legacy torch file starts with its magic number's)."""
    import io

    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        return True
    except Exception:  # noqa: BLE001
        return False


def _pickle_globals(data: bytes) -> set[str]:
    """Globals of the pickles in ``data`` (a legacy torch file holds several in a row). STACK_GLOBAL takes its
    module and name from the two strings pushed before it, possibly through the memo."""
    import io

    names: set[str] = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        memo: dict[int, object] = {}
        last = None
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(f"{strings[-2]}.{strings[-1]}")
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                                 "BINSTRING", "STRING"):
                    strings.append(str(arg))
                    last = str(arg)
                    continue
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and last is not None:
                    memo[int(arg)] = last
                    continue
                elif op.name == "MEMOIZE" and last is not None:
                    memo[len(memo)] = last
                    continue
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(int(arg)), str):
                    strings.append(memo[int(arg)])  # type: ignore[arg-type]
                    last = strings[-1]
                    continue
                last = None
        except Exception:  # noqa: BLE001  (not a pickle past here: the weights-only load decides)
            break
    return names


def _allowed(name: str) -> bool:
    if name in _ALLOWED_NAMES:
        return True
    if not name.startswith(_MODULE_PREFIXES):
        return False
    try:
        obj = _resolve(name)
    except ModelLoadError:
        return False
    import torch

    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def _resolve(name: str):
    """The object ``module.qualname`` names; only called for names under the allowed prefixes or in the list."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            break
    raise ModelLoadError(f"{name}: not found in this installation")


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Unsupported" in ln or "GLOBAL" in ln or "magic" in ln.lower()]
    return (useful or lines or [type(e).__name__])[0][:200]
