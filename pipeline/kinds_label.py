"""The labelling loop's step kinds: ``label_pick`` (the frames a person should label first, exported
as a labelling task) and ``label_override`` (a person's boxes replace the pseudo-labels on the frames
they labelled). The work is in :mod:`tasks.label_export` and :mod:`tasks.label_import`; these only
wire files. Boxes stay COCO ``xywh`` pixels.
"""
from __future__ import annotations

from pathlib import Path

from core import atomic
from pipeline.step import PipelineContext, Step, StepOutput


def label_pick_step(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """The thermal adapt frames a person should label first, exported as a task (:mod:`tasks.label_export`)."""
    from tasks.label_export import run_label_pick

    p = ctx.params
    pseudo = p.stage_params("pseudo")
    fuse = p.stage_params("fuse") if step.options.get("fused") else None

    def threshold(cls: str, daynight: str | None) -> float:    # what kept a training label (fused, or RGB pseudo)
        return fuse.threshold(cls, daynight) if fuse is not None else pseudo.threshold(cls)

    sources = {r.removeprefix("source:"): ctx.input(step, r) for r in step.needs if r.startswith("source:")}
    files = run_label_pick(ctx.input(step, "labels"), sources, ctx.input(step, "pool"), ctx.input(step, "index"),
                           out, p.pick_params(), threshold, ctx.image_root, p.data.classes)
    return StepOutput(files=files, info={"counts": {"picked": len(atomic.read_json(files["picked"]))}})


def label_override_step(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Training labels with a person's boxes on the frames they labelled (:func:`tasks.label_import.run_override`)."""
    from tasks.label_import import run_override

    path, counts = run_override(ctx.input(step, "labels"), ctx.input(step, "human"), ctx.input(step, "index"),
                                out / "labels.json", ctx.params.label.human_repeat)
    return StepOutput(files={"coco": path}, info={"counts": counts})
