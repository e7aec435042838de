"""What each step *kind* does: :func:`run_kind`, the executor's one call into the work.

A COCO-in/COCO-out kind (``infer``, ``pseudo``, ``warp``, ``refine``, ``fuse``: every kind in
:data:`tasks.stage_specs.STAGE_SPECS`) has no code of its own in ``pipeline/``:
:func:`pipeline.kinds.run_stage` runs it from its task module's declaration. The other kinds are
the pipeline's own (:data:`KINDS`), thin glue to the data layer (``data``, ``index``:
:mod:`pipeline.kinds_data`) and to :mod:`tasks` (here: ``model``; ``train``:
:mod:`tasks.train_spec_build`; ``quality``: :mod:`tasks.report`; ``eval``: :mod:`tasks.compare`).
A kind reads its inputs through ``ctx.input(step, role)`` (the upstream outputs its plan entry
names) and writes only under its own stage folder. Models travel between steps as descriptors
(:mod:`pipeline.models`). Image paths in every index and COCO file a step writes are relative to
the workspace (``ctx.image_root``); dataset roots are reached through ``datasets/<version>`` links.

Boxes in every file are COCO ``xywh`` pixels (see :mod:`core.coco`); nothing is converted here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from core import atomic
from pipeline.kinds import run_stage, stage_spec
from pipeline.kinds_data import data_step, index_step
from pipeline.kinds_label import label_override_step, label_pick_step
from pipeline.models import model_of, required_model, write_model
from pipeline.step import PipelineContext, Step, StepOutput

log = logging.getLogger(__name__)
Kind = Callable[[PipelineContext, Step, Path], StepOutput]


def run_kind(ctx: PipelineContext, step: Step, out: Path, *, resume: bool = False) -> StepOutput:
    """Run ``step``'s kind into ``out``; ``resume`` continues an interrupted attempt (training)."""
    if step.kind == "train":
        return _train_step(ctx, step, out, resume=resume)
    if (spec := stage_spec(step.kind)) is not None:
        return run_stage(ctx, step, out, spec)
    return KINDS[step.kind](ctx, step, out)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def _model_step(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """The user's detector (config + checkpoint), described for the steps that use it."""
    t = ctx.params.teacher
    assert t.config is not None
    ck = Path(t.checkpoint) if t.checkpoint is not None else None
    fallbacks = [] if ck else ["the teacher has no checkpoint: RANDOM weights (its pseudo-labels are meaningless)"]
    model, fp = write_model(ctx, out, t.config, ck, "user")
    return StepOutput(files={"model": model}, info={"models": {step.name: fp}, "fallbacks": fallbacks})


def _train_step(ctx: PipelineContext, step: Step, out: Path, *, resume: bool) -> StepOutput:
    """Train the step's detector on its labels (:func:`tasks.train_spec_build.run_training_step`); an
    optional step without labels writes ``model.json`` ``{"absent": why}`` for ``eval`` to leave out."""
    from tasks.train_spec_build import run_training_step

    run = run_training_step(
        ctx.params.train_fields(step.options["fields"]), name=step.name, labels=ctx.input(step, "labels"),
        classes=ctx.params.data.classes, image_root=ctx.image_root, out=out, resume=resume,
        optional=bool(step.options.get("optional")),
        rgb_labels=ctx.input(step, "rgb_labels") if "rgb_labels" in step.needs else None,
        val_labels=ctx.input(step, "val") if "val" in step.needs else None,
        init=(lambda: required_model(ctx, ctx.input(step, "init"))[1]) if "init" in step.needs else None)
    if (result := run.result) is None:
        log.info(run.note)
        return StepOutput(files={"model": atomic.write_json(out / "model.json", {"absent": run.note})},
                          info={"note": run.note})
    ck = Path(result.slim_checkpoint)
    model, fp = write_model(ctx, out, str(result.config_path), ck, "trained")
    return StepOutput(files={"model": model, "config": Path(result.config_path), "checkpoint": ck,
                             "train_result": Path(result.run_dir) / "train_result.json"},
                      info={"models": {step.name: fp}, "fallbacks": list(result.warnings),
                            "train": {"epochs_run": result.epochs_run, "timings": result.timings,
                                      "processes": result.processes, "backend": result.backend,
                                      "resumed_from_epoch_checkpoint": "resumed_from" in result.weights}})


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _quality(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Score pseudo-labels stage by stage against thermal labels of the adapt split, where they
    exist (synthetic data, benchmarks). Without them the report says so and scores nothing."""
    from tasks.report import NO_THERMAL_LABELS, ReportInputs, ReportParams, run_report

    rep = run_report(ReportInputs(thermal_gt=ctx.input(step, "thermal_gt"), rgb_gt=ctx.input(step, "rgb_gt"),
                                  pseudo=ctx.input(step, "pseudo") if "pseudo" in step.needs else None,
                                  warped=ctx.input(step, "warped"), refined=ctx.input(step, "refined"),
                                  extra=tuple((role.removeprefix("label:"), ctx.input(step, role))
                                              for role in step.needs if role.startswith("label:"))),
                     out / "quality", ReportParams(n_overlays=2, image_root=str(ctx.image_root)),
                     index=ctx.input(step, "index"))
    files = {k: Path(rep.outputs[k]) for k in ("markdown", "json") if k in rep.outputs}
    return StepOutput(files=files, info={"counts": rep.counts} if "json" in files else {"note": NO_THERMAL_LABELS})


def _eval(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Score each model column on the step's ground truth (``eval``: test split, ``val``: val split).

    Every model runs through the infer stage (:func:`tasks.compare.evaluate_columns`) with the step
    cache ``ctx.cache_dir("infer")``, so an unchanged model on unchanged frames is all cache hits, and with
    the parameters it pseudo-labels with (the ``infer`` section merged with ``thermal_source.infer``:
    test size, TTA, device; the score floor is at most ``tasks.infer.EVAL_MIN_SCORE``, since COCO AP
    wants low-score detections). Batch size: ``eval.batch_size``.
    """
    from tasks.compare import evaluate_columns

    gt, p = ctx.input(step, "gt"), ctx.params
    params, notes = {}, []
    for column in step.options["columns"]:
        model = model_of(ctx, ctx.input(step, f"model:{column}"))
        if model is None:                     # an optional model (the oracle without thermal labels)
            notes.append(f"column {column} left out: {atomic.read_json(ctx.input(step, f'model:{column}'))['absent']}")
            continue
        params[column] = p.eval_infer_params(model[0], model[1],
                                             "thermal_teacher" if column == "source_only" else "thermal_student")
    res = evaluate_columns(gt, params, out, p.eval.metrics, columns=step.options["columns"],
                           cache_dir=ctx.cache_dir("infer"), hash_memo=ctx.memo, image_root=ctx.image_root,
                           describe=step.options.get("describe"), decisions=(decisions := _decisions(ctx, step, gt)),
                           compute=ctx.compute)
    ev = res.evaluation
    return StepOutput(files={**ev.files, **{f"predictions_{k}": v for k, v in res.predictions.items()}},
                      cache_hits=res.cache_hits, cache_misses=res.cache_misses,
                      info={"metrics": {**ev.metrics, "table_markdown": ev.markdown}, "notes": notes,
                            "decisions": decisions, "test_sizes": {k: c["test_size"] for k, c in res.conditions.items()},
                            "fallbacks": res.fallbacks})


def _decisions(ctx: PipelineContext, step: Step, gt: Path) -> str:
    """One sentence for the report and the record: what this run's decisions were made on."""
    from tasks.compare import decisions_sentence

    d = ctx.params.data
    how = (f"data.val_fraction={d.val_fraction} of the adapt pairs" if d.val_fraction else f"split '{d.val_split}'"
           ) if d.has_val else None
    return decisions_sentence(on_val=step.options.get("split") == "val", n_frames=len(atomic.read_json(gt)["images"]),
                              val_how=how, rounds=ctx.params.self_training.rounds)


#: The pipeline's own kinds (``train`` is :func:`_train_step`, which resumes); every other kind is a
#: COCO stage of :data:`tasks.stage_specs.STAGE_SPECS`.
KINDS: dict[str, Kind] = {"data": data_step, "index": index_step, "model": _model_step, "quality": _quality, "eval": _eval,
                          "label_pick": label_pick_step, "label_override": label_override_step}
