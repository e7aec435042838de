"""The plan: which steps a parameter set runs and what each one reads — declared once, here.

Everything else follows from this declaration: the executor's stage keys (:mod:`pipeline.executor`),
the Prefect flow's tasks (``flows/adapt.py``) and the generated ``dvc.yaml``
(:mod:`pipeline.dvcgen`: deps = upstream stage folders + ``external`` files, params = ``sections``).
So a homography YAML, a teacher checkpoint or a SAM2 checkpoint that a step reads is an
``external`` of that step, and DVC re-runs it when the file changes, exactly as the plain door does.

Default plan::

    data -> index -> teacher -> infer (RGB adapt frames) -> pseudo -> warp -> refine
         -> student (refined labels) -> baseline (warped labels, when eval.baselines has
         no_refinement) -> quality -> eval (thermal test split, models side by side)

The teacher of a step is an input (``Ref("teacher", "model")``), never a name the stage knows.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.executor import Ref, Step
from pipeline.params import PipelineParams

#: eval column name -> the step whose model it scores (default plan).
EVAL_MODELS = {"adapted": "student", "no_refinement": "baseline", "source_only": "teacher"}


def _model(step: str) -> Ref:
    return Ref(step, "model")


def plan(params: PipelineParams) -> list[Step]:
    """The steps ``params`` runs, in execution order (every door iterates this list)."""
    d, t = params.data, params.teacher
    datasets = {"datasets": Ref("data", "datasets")}
    steps = [Step("data", "data", ("data",), external={f"root:{r.version}": r.path for r in d.roots}),
             Step("index", "index", ("data",), needs=dict(datasets), retries=1)]

    if t.train is None:
        ext = {"config": Path(t.config)} if t.config and Path(t.config).is_file() else {}
        if t.checkpoint is not None:
            ext["checkpoint"] = t.checkpoint
        steps.append(Step("teacher", "model", ("teacher",), external=ext))
    else:
        steps.append(Step("teacher", "train", ("teacher", "data"),
                          needs={"labels": Ref("index", "rgb_adapt"), **datasets},
                          options={"role": "teacher", "fields": "teacher"}, resumable=True))

    steps.append(Step("infer", "infer", ("infer",), retries=1,
                      needs={"images": Ref("index", "rgb_adapt"), "model": _model("teacher"), **datasets},
                      options={"source": "rgb_teacher"}))
    steps.append(Step("pseudo", "pseudo", ("pseudo", "data"), needs={"predictions": Ref("infer", "coco")}, retries=1))

    registry = params.warp.get("registry_dir")
    warp_needs = {"labels": Ref("pseudo", "coco"), "index": Ref("index", "index")}
    warp_ext: dict[str, Path] = {}
    if registry is not None:
        warp_ext["registry"] = Path(registry)
    elif d.synthetic is not None:
        warp_needs["registry"] = Ref("data", "registry")
    else:
        from registration.registry import DEFAULT_REGISTRY_DIR

        warp_ext["registry"] = DEFAULT_REGISTRY_DIR
    steps.append(Step("warp", "warp", ("warp",), needs=warp_needs, external=warp_ext, retries=1))

    sam2 = params.refine.get("sam2_checkpoint")
    steps.append(Step("refine", "refine", ("refine",), retries=1,
                      needs={"labels": Ref("warp", "coco"), "index": Ref("index", "index"), **datasets},
                      external={"sam2_checkpoint": Path(sam2)} if sam2 else {}))

    init = {"init": _model("teacher")} if params.student.init_from_teacher else {}
    steps.append(Step("student", "train", ("student", "data"), needs={"labels": Ref("refine", "coco"), **datasets, **init},
                      options={"role": "student", "fields": "student"}, resumable=True))
    if "no_refinement" in params.eval.baselines:
        steps.append(Step("baseline", "train", ("student", "data"),
                          needs={"labels": Ref("warp", "coco"), **datasets, **init},
                          options={"role": "baseline", "fields": "student"}, resumable=True))
    steps.append(Step("quality", "quality", (), retries=1, needs={
        "rgb_gt": Ref("index", "rgb_adapt"), "pseudo": Ref("pseudo", "coco"), "warped": Ref("warp", "coco"),
        "refined": Ref("refine", "coco"), "index": Ref("index", "index"),
        "thermal_gt": Ref("index", "thermal_adapt")}))

    columns = ["adapted", *[b for b in ("no_refinement", "source_only") if b in params.eval.baselines]]
    steps.append(Step("eval", "eval", ("eval",), needs={
        "gt": Ref("index", "thermal_test"), **datasets, **{f"model:{c}": _model(EVAL_MODELS[c]) for c in columns}},
        options={"columns": columns}))
    return steps


def step_names(params: PipelineParams) -> list[str]:
    return [s.name for s in plan(params)]
