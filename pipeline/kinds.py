"""The one adapter from a plan step to a COCO stage (``infer``, ``pseudo``, ``warp``, ``refine``,
``fuse``, and any kind in :data:`tasks.stage_specs.STAGE_SPECS`).

Why one: every COCO stage is wired the same way, so the wiring is written once and each stage
only declares its facts (:class:`core.stage_spec.StageSpec`, at the end of its task module): the
input roles its plan entry names are passed as its input, its parameters are its ``params.yaml``
section + the step's ``params`` option + the values the pipeline supplies (``wired``/``filled``:
the model's config and checkpoint, the classes, the workspace as image root, the registry), the
common keyword arguments it ``uses`` are passed, and the step output is built from its report.

Boxes in every file are COCO ``xywh`` pixels (see :mod:`core.coco`); nothing is converted here.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import InputError
from core.stage_report import StageReport, report_path
from core.stage_spec import Common, StageSpec, Wire
from pipeline.models import required_model
from pipeline.step import PipelineContext, Step, StepOutput
from tasks import stage_specs

_Supply = Callable[[PipelineContext, Step, StageSpec], Any]

#: How the pipeline supplies each :data:`core.stage_spec.Common` keyword argument.
_COMMON: dict[Common, _Supply] = {
    "cache_dir": lambda ctx, step, spec: ctx.cache_dir(spec.kind),
    "hash_memo": lambda ctx, step, spec: ctx.memo,
    "image_root": lambda ctx, step, spec: ctx.image_root,
    "index": lambda ctx, step, spec: ctx.input(step, "index"),
    "compute": lambda ctx, step, spec: ctx.compute,     # where per-image work runs (issue 25: PipelineContext.compute)
}


def _wire(ctx: PipelineContext, step: Step, wire: Wire) -> Any:
    """The value of ``wire`` (:data:`core.stage_spec.Wire`, but ``classes``) for ``step``."""
    if wire == "image_root":
        return str(ctx.image_root)
    if wire in ("model_config", "model_checkpoint"):
        config, checkpoint = required_model(ctx, ctx.input(step, "model"))
        return config if wire == "model_config" else checkpoint
    if wire == "registry":
        return Path(step.external.get("registry") or ctx.input(step, "registry"))
    if wire == "source":                          # the step's provenance tag (every infer entry sets it)
        return step.options["source"]
    raise ValueError(f"step {step.name}: the pipeline supplies no value '{wire}' (see core.stage_spec.Wire)")


def stage_spec(kind: str) -> StageSpec | None:
    """The COCO stage declared for step kind ``kind``, or None (a kind of the pipeline's own)."""
    return stage_specs.STAGE_SPECS.get(kind)


def run_stage(ctx: PipelineContext, step: Step, out: Path, spec: StageSpec) -> StepOutput:
    """Run COCO stage ``spec`` for ``step`` into the folder ``out`` (``out / spec.output`` + its report).

    Args:
        ctx: the run (parameters, workspace, upstream outputs, caches).
        step: the plan entry: its ``needs`` name the input roles ``spec.inputs`` (and ``index``,
            ``model``, ``registry`` where the spec uses them); option ``params`` overrides the
            section, option ``source`` is the provenance tag, option ``require_labels`` refuses
            an input without annotations.
        out: the step's folder.
        spec: the stage's declaration.

    Returns:
        The step output: files ``coco`` and ``report``, the report's cache counts, counts, drops,
        fallbacks and the number of skipped images.
    """
    files = {role: ctx.input(step, role) for role in ((spec.inputs,) if isinstance(spec.inputs, str) else spec.inputs)}
    if step.options.get("require_labels"):
        _require_labels(files)
    wired = {name: _wire(ctx, step, w) for name, w in {**spec.wired, **spec.filled}.items()
             if w != "classes"}         # the parameters' own: PipelineParams.stage_params fills them
    params = ctx.params.stage_params(spec.kind, step.options.get("params"), **wired)
    coco = out / spec.output
    rep = spec.run(files[spec.inputs] if isinstance(spec.inputs, str) else files, coco, params,
                   **{name: _COMMON[name](ctx, step, spec) for name in spec.uses})
    return from_report(rep, coco)


def _require_labels(files: dict[str, Path]) -> None:
    """The plan sets ``require_labels`` on ``warp`` when ``rgb_source.boxes`` is ``labels``: RGB
    frames without any label would train the students on nothing, so the run stops here."""
    for path in files.values():
        if not atomic.read_json(path)["annotations"]:
            raise InputError("rgb_source.boxes is 'labels' but the RGB adapt frames have no labels", str(path),
                             "give the RGB frames label files (labels_rgb/) or set rgb_source.boxes: predictions")


def from_report(rep: StageReport, coco: Path) -> StepOutput:
    """A COCO stage's step output: its file, its report beside it, and the report's facts for the record."""
    return StepOutput(files={"coco": coco, "report": report_path(coco)}, cache_hits=rep.cache_hits,
                      cache_misses=rep.cache_misses,
                      info={"counts": rep.counts, "dropped": rep.dropped, "fallbacks": list(rep.fallbacks),
                            "skipped_images": len(rep.skipped_images)})
