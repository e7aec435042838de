"""Models between steps: each model-making step writes a small descriptor ``model.json``
(``config``, ``checkpoint``, ``checkpoint_sha256``, ``source``; paths relative to the workspace when
inside it), so "the teacher" of a step is whatever model its plan entry points at: the user's
checkpoint, a trained teacher or a previous student. An optional step with nothing to train on
writes ``{"absent": why}`` instead.
"""
from __future__ import annotations

from pathlib import Path

from core import atomic
from core.errors import InputError
from pipeline.step import PipelineContext


#: How a descriptor names a file of the user's teacher (outside the workspace): by its parameter,
#: not its path, so a checkpoint moved with the same content changes no descriptor (and no key).
TEACHER_REF = {"config": "params:teacher.config", "checkpoint": "params:teacher.checkpoint"}


def write_model(ctx: PipelineContext, out: Path, config: str, checkpoint: Path | None, source: str) -> tuple[Path, str]:
    """Write ``model.json``; returns it and the model's fingerprint for the run record.

    Files inside the workspace are named relative to it; the user's teacher files (``source`` =
    ``user``) by their parameter (:data:`TEACHER_REF`; their content is in the teacher step's key).
    """
    sha = ctx.memo.sha256(checkpoint) if checkpoint is not None else None      # memo: the key hashed it already

    def ref(path: str | Path, role: str) -> str:
        rel = ctx.rel(path)
        return TEACHER_REF[role] if source == "user" and Path(rel).is_absolute() else rel

    cfg = ref(config, "config") if Path(config).is_file() else config      # a bundled mmdet name stays a name
    path = atomic.write_json(out / "model.json", {"config": cfg, "checkpoint": ref(checkpoint, "checkpoint")
                                                  if checkpoint else None, "checkpoint_sha256": sha, "source": source})
    return path, f"sha256:{sha}" if sha else "random-init"


def _path(ctx: PipelineContext, value: str) -> str:
    if value == TEACHER_REF["config"]:
        return str(ctx.params.teacher.config)
    if value == TEACHER_REF["checkpoint"]:
        return str(ctx.params.teacher.checkpoint)
    return str(ctx.resolve(value))


def model_of(ctx: PipelineContext, descriptor: Path) -> tuple[str, str | None] | None:
    """(config, checkpoint) of a ``model.json`` descriptor, absolute where they are files; None when
    the descriptor says the model is absent (an optional step that had nothing to train on)."""
    d = atomic.read_json(descriptor)
    if "absent" in d:
        return None
    cfg = _path(ctx, d["config"]) if d["config"].endswith(".py") or d["config"] in TEACHER_REF.values() else d["config"]
    return cfg, (_path(ctx, d["checkpoint"]) if d["checkpoint"] else None)


def required_model(ctx: PipelineContext, descriptor: Path) -> tuple[str, str | None]:
    """:func:`model_of` for a step that cannot run without the model (InputError when it is absent)."""
    model = model_of(ctx, descriptor)
    if model is None:
        raise InputError(f"no model to use: {atomic.read_json(descriptor)['absent']}", str(descriptor),
                         "provide the labels the step that makes this model needs")
    return model
