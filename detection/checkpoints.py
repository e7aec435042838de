"""Reading detector checkpoints safely: which files may be fully unpickled, and one wording for
an unreadable one.

Why a module of its own: every loader (the detector, training's head transfer, the SAM2 refiner,
the nightly champion re-score) must refuse the same way. A user-named checkpoint is trusted (see
``core.compat``); a file the user did not name (the one ``champion.json`` points to) loads under
torch's strict ``weights_only`` default. Split out of :mod:`detection.detector`, which re-exports
these names.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import InputError


def read_checkpoint(checkpoint: str | os.PathLike[str], *, trusted: bool = True) -> dict:
    """Load a user-named checkpoint (trusted: see ``core.compat``) as a dict with ``state_dict``.

    Accepts mmengine training checkpoints, slim inference checkpoints and bare state dicts.
    ``trusted=False`` (a file the user did not name, e.g. the one ``champion.json`` points to):
    torch's strict ``weights_only`` default, so only plain tensors and containers load (slim
    checkpoints do) and a pickle holding anything else is refused with InputError saying why.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError("checkpoint file not found", str(path), "check the path (a .pth file)")
    ckpt = _load_or_refuse(path) if trusted else _load_strict(path)
    if not isinstance(ckpt, dict):
        raise InputError(f"not a checkpoint (got {type(ckpt).__name__})", str(path), "pass a .pth saved by mmdet/mmengine")
    if "state_dict" not in ckpt:
        if ckpt and all(hasattr(v, "shape") for v in ckpt.values()):
            ckpt = {"state_dict": ckpt, "meta": {}}
        else:
            raise InputError("checkpoint has no 'state_dict'", str(path), "pass a .pth saved by mmdet/mmengine")
    sd = ckpt["state_dict"]
    if sd and all(k.startswith("module.") for k in sd):
        ckpt = {**ckpt, "state_dict": {k[len("module."):]: v for k, v in sd.items()}}
    return ckpt


#: Words of the ``RuntimeError`` torch's archive reader raises for a damaged ``.pth`` (zip format):
#: only those mean "the file is broken"; any other ``RuntimeError`` is not ours to reword.
_ARCHIVE_ERROR_WORDS = ("PytorchStreamReader", "zip archive", "inline_container", "hasRecord")


def _load_or_refuse(path: Path) -> Any:
    """``torch.load`` of a user-named checkpoint (trusted, as ``core.compat`` explains), with a
    damaged file turned into an :class:`InputError`.

    Why: a truncated download or an interrupted copy otherwise surfaces as a torch/pickle traceback
    (``EOFError``, ``UnpicklingError``, ``RuntimeError: PytorchStreamReader failed ...``) that does
    not say which file is at fault or that the remedy is a fresh copy. The file is opened with an
    explicit ``weights_only=False`` for this call only (:func:`core.compat.load_trusted_checkpoint`):
    no process-wide switch, so a strict load running in another thread stays strict.
    """
    import pickle
    import zipfile

    from core.compat import load_trusted_checkpoint

    try:
        return load_trusted_checkpoint(path, map_location="cpu")
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise _unreadable_checkpoint(path, exc) from None
    except RuntimeError as exc:
        if not any(w in str(exc) for w in _ARCHIVE_ERROR_WORDS):
            raise
        raise _unreadable_checkpoint(path, exc) from None


def _load_strict(path: Path) -> Any:
    """``torch.load`` under torch's strict default, with its refusal of a full pickle as InputError."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise _unreadable_checkpoint(path, exc) from None
        raise InputError("refused to unpickle a checkpoint that was not named by you: it holds objects beyond "
                         "tensors, and unpickling those can run code (torch's weights_only=True)", str(path),
                         "point to a slim checkpoint written by rgb2thermal, or pass the file explicitly "
                         "(rgb2thermal stage infer --checkpoint / eval) if you trust it") from None
    except (EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise _unreadable_checkpoint(path, exc) from None


def unreadable_checkpoint_error(path: str | os.PathLike[str], exc: BaseException) -> InputError | None:
    """The InputError for a checkpoint whose bytes torch cannot read (truncated, not a pickle, bad zip),
    or None when ``exc`` is not that (another ``RuntimeError`` keeps its traceback). For loaders of
    other checkpoint kinds (SAM2) that want the same wording."""
    import pickle
    import zipfile

    if isinstance(exc, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)):
        return _unreadable_checkpoint(Path(path), exc)
    if isinstance(exc, RuntimeError) and any(w in str(exc) for w in _ARCHIVE_ERROR_WORDS):
        return _unreadable_checkpoint(Path(path), exc)
    return None


def _unreadable_checkpoint(path: Path, exc: BaseException) -> InputError:
    """The one wording for a checkpoint file whose bytes torch cannot read (truncated, not a pickle,
    bad zip): the first line of torch's reason, the size on disk (0 or a few bytes says "torn copy")."""
    reason = (str(exc).strip().splitlines() or [""])[0].split(". This is an internal")[0][:160]
    size = path.stat().st_size
    return InputError(f"not a readable checkpoint ({type(exc).__name__}: {reason or 'no detail'}; "
                      f"file is {size} bytes): truncated or damaged", str(path),
                      "re-download the checkpoint, or re-export it from its training run (torch.save / mmengine)")


def checkpoint_classes(ckpt: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Class names stored in a checkpoint's ``meta.dataset_meta.classes`` (None when absent)."""
    meta = ckpt.get("meta") or {}
    classes = (meta.get("dataset_meta") or {}).get("classes")
    return tuple(classes) if classes else None
