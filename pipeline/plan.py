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

With a thermal source and self-training (``thermal_source.enabled``, ``self_training.rounds: 2``)::

    ... refine -> infer@thermal (teacher on thermal adapt frames) -> pseudo@thermal
        -> fuse (RGB + thermal) -> student -> infer@round2 (student on thermal) -> pseudo@round2
        -> fuse@round2 -> student@round2 -> [baseline, classic, oracle] -> quality -> eval

With ``label.override`` each student's labels pass an ``override`` step (a person's boxes in place of the
pseudo-labels on the frames they labelled); with ``label.pick_n > 0`` a last ``pick`` step exports the
most uncertain thermal adapt frames as a labelling task (README "The labelling loop").

With a val split (``data.val_split`` or ``data.val_fraction``) every trained step is validated on
the val frames' thermal labels (best checkpoint) and a ``val`` step (kind ``eval``) scores every
model on them before ``eval`` scores them on test: decisions read ``val``, ``eval`` is reported.

The teacher of a step is an input (``Ref("teacher", "model")``), never a name the stage knows.
"""
from __future__ import annotations

from pathlib import Path

from data.synthetic import SCHEMA as SYNTHETIC_SCHEMA
from pipeline.step import Ref, Step
from pipeline.params import PipelineParams, set_values
from tasks.label_pick import SCORING


def _model(step: str) -> Ref:
    return Ref(step, "model")


def plan(params: PipelineParams) -> list[Step]:
    """The steps ``params`` runs, in execution order (every door iterates this list)."""
    d, t = params.data, params.teacher
    datasets = {"datasets": Ref("data", "datasets")}
    # the generator's version is in the data step's key: frames another generator drew are never reused
    generator = {"generator": SYNTHETIC_SCHEMA} if d.synthetic is not None else {}
    steps = [Step("data", "data", ("data",), options=generator,
                  external={f"root:{r.version}": r.path for r in d.roots}),
             Step("index", "index", ("data",), needs=dict(datasets), retries=1)]

    if t.train is None:
        ext = {"config": Path(str(t.config))} if t.config_is_file else {}
        if t.checkpoint is not None:
            ext["checkpoint"] = t.checkpoint
        steps.append(Step("teacher", "model", ("teacher",), external=ext))
    else:
        steps.append(Step("teacher", "train", ("teacher", "data"),
                          needs={"labels": Ref("index", "rgb_adapt"), **datasets},
                          options={"role": "teacher", "fields": "teacher"}, resumable=True))

    rgb_labels = params.rgb_source.boxes == "labels"
    if not rgb_labels:      # with ``rgb_source.boxes: labels`` the RGB frames' own labels are warped instead
        steps.append(Step("infer", "infer", ("infer",), retries=1,
                          needs={"images": Ref("index", "rgb_adapt"), "model": _model("teacher"), **datasets},
                          options={"source": "rgb_teacher"}))
        steps.append(Step("pseudo", "pseudo", ("pseudo", "data"), needs={"predictions": Ref("infer", "coco")},
                          retries=1))

    registry = params.warp.registry_dir
    warp_needs = {"labels": Ref("index", "rgb_adapt") if rgb_labels else Ref("pseudo", "coco"),
                  "index": Ref("index", "index")}
    warp_ext: dict[str, Path] = {}
    if registry is not None:
        warp_ext["registry"] = Path(registry)
    elif d.synthetic is not None:
        warp_needs["registry"] = Ref("data", "registry")
    else:
        from registration.registry import DEFAULT_REGISTRY_DIR

        warp_ext["registry"] = DEFAULT_REGISTRY_DIR
    steps.append(Step("warp", "warp", ("warp", "rgb_source") if rgb_labels else ("warp",), needs=warp_needs,
                      external=warp_ext, retries=1, options={"require_labels": True} if rgb_labels else {}))

    sam2 = params.refine.sam2_checkpoint
    steps.append(Step("refine", "refine", ("refine",), retries=1,
                      needs={"labels": Ref("warp", "coco"), "index": Ref("index", "index"), **datasets},
                      external={"sam2_checkpoint": Path(sam2)} if sam2 else {}))

    _students(params, steps, datasets)
    return steps


def _train(name: str, labels: Ref, datasets: dict[str, Ref], init: Ref | None, mix_rgb: bool = False,
           val: bool = False, **options: object) -> Step:
    """A student trained on ``labels`` (+ the RGB adapt frames' ground truth when ``mix_rgb``);
    with ``val``, validated per ``val_interval`` on the val split's thermal labels (best checkpoint)."""
    extra = {"rgb_labels": Ref("index", "rgb_adapt")} if mix_rgb else {}
    if val:
        extra["val"] = Ref("index", "thermal_val")
    return Step(name, "train", ("student", "data"),
                needs={"labels": labels, **extra, **datasets, **({"init": init} if init else {})},
                options={"role": name, "fields": "student", **options}, resumable=True)


def _students(params: PipelineParams, steps: list[Step], datasets: dict[str, Ref]) -> None:
    """The students, the self-training rounds, the baselines, quality and eval (appended to ``steps``).

    Round k (k = 1..rounds): a thermal source labels the thermal adapt frames — the teacher in
    round 1 (when ``thermal_source.enabled``), student k-1 after that — its pseudo-labels are fused
    with the refined RGB labels (``fuse``), and student k trains on the fused set. Without a
    thermal source, round 1's student trains on the refined RGB labels (the classic recipe).
    """
    teacher = _model("teacher") if params.student.init_from_teacher else None
    val = params.data.has_val
    students: list[str] = []
    label_sets: dict[str, Ref] = {}            # thermal-frame label sets the quality report scores
    for k in range(1, params.self_training.rounds + 1):
        labels = Ref("refine", "coco")
        if k > 1 or params.thermal_source.enabled:
            labels = _thermal_round(params, steps, datasets, k, students[-1] if k > 1 else "teacher", label_sets)
        if params.label.override:       # a person's boxes in place of the pseudo-labels on their frames
            repeat = ("label.human_repeat",) if "human_repeat" in params.label.model_fields_set else ()
            steps.append(Step(f"override{'' if k == 1 else f'@round{k}'}", "label_override", repeat, needs={
                "labels": labels, "human": Ref("index", "thermal_adapt"), "index": Ref("index", "index")}))
            labels = Ref(steps[-1].name, "coco")
        init = _model(students[-1]) if (k > 1 and params.self_training.init == "previous") else teacher
        students.append("student" if k == 1 else f"student@round{k}")
        steps.append(_train(students[-1], labels, datasets, init, mix_rgb=params.student.mix_rgb, val=val))
    _baselines(params, steps, datasets, teacher, len(students))
    rgb_pseudo = {} if params.rgb_source.boxes == "labels" else {"pseudo": Ref("pseudo", "coco")}
    steps.append(Step("quality", "quality", (), retries=1, needs={
        "rgb_gt": Ref("index", "rgb_adapt"), **rgb_pseudo, "warped": Ref("warp", "coco"),
        "refined": Ref("refine", "coco"), "index": Ref("index", "index"),
        "thermal_gt": Ref("index", "thermal_adapt"), **label_sets}))
    _evals(params, steps, datasets, students)
    if params.label.pick_n > 0:
        steps.append(_pick(params, steps))


def _pick(params: PipelineParams, steps: list[Step]) -> Step:
    """The ``pick`` step (``label.pick_n > 0``, last in the plan): the thermal adapt frames a person should
    label first, from the last round's training labels and every label source, exported as a labelling task."""
    names = [s.name for s in steps]
    fuses = [n for n in names if n == "fuse" or n.startswith("fuse@")]
    sources = {"source:rgb": Ref("refine", "coco")}
    sources.update({f"source:{n.removeprefix('pseudo@')}": Ref(n, "coco") for n in names if n.startswith("pseudo@")})
    return Step("pick", "label_pick", ("label", "fuse" if fuses else "pseudo", "data"),
                needs={"labels": Ref(fuses[-1] if fuses else "refine", "coco"), **sources,
                       "pool": Ref("index", "thermal_adapt_images"), "index": Ref("index", "index"),
                       "datasets": Ref("data", "datasets")}, options={"fused": bool(fuses), "scoring": SCORING})


def _thermal_round(params: PipelineParams, steps: list[Step], datasets: dict[str, Ref], k: int, source: str,
                   label_sets: dict[str, Ref]) -> Ref:
    """Round ``k``'s thermal labels: ``source`` (a model step) infers on the thermal adapt frames, its
    pseudo-labels are fused with the refined RGB labels; appends the steps, records the label sets the
    quality report scores in ``label_sets`` and returns the fused labels."""
    tag = "thermal" if k == 1 else f"round{k}"
    thermal_pseudo, st = set_values(params.thermal_source.pseudo), params.self_training
    # a student's labels also read self_training.infer / .pseudo (its own test sizes, thresholds), when
    # set: its keys and DVC's params say so; only those fields, so that more rounds do not re-key this one
    own_infer = ("self_training.infer",) if k > 1 and st.infer.model_fields_set else ()
    steps.append(Step(f"infer@{tag}", "infer", ("infer", "thermal_source", *own_infer), retries=1,
                      needs={"images": Ref("index", "thermal_adapt_images"), "model": _model(source), **datasets},
                      options={"source": "thermal_teacher" if k == 1 else "thermal_student",
                               "params": set_values(params.thermal_source.infer) if k == 1 else
                               st.round_infer(params.thermal_source.infer)}))
    own = ("self_training.pseudo",) if k > 1 and st.pseudo.model_fields_set else ()
    steps.append(Step(f"pseudo@{tag}", "pseudo", ("pseudo", "thermal_source", *own, "data"),
                      needs={"predictions": Ref(f"infer@{tag}", "coco")},
                      options={"params": thermal_pseudo if k == 1 else
                               st.round_pseudo(thermal_pseudo)}))
    fuse = "fuse" if k == 1 else f"fuse@{tag}"
    steps.append(Step(fuse, "fuse", ("fuse",), retries=1,
                      needs={"rgb": Ref("refine", "coco"), "thermal": Ref(f"pseudo@{tag}", "coco")}))
    label_sets[f"label:{source} on thermal"] = Ref(f"pseudo@{tag}", "coco")
    label_sets[f"label:fused, round {k}"] = Ref(fuse, "coco")
    return Ref(fuse, "coco")


def _baselines(params: PipelineParams, steps: list[Step], datasets: dict[str, Ref], teacher: Ref | None,
               n_students: int) -> None:
    """The comparison students ``eval.baselines`` asks for (appended to ``steps``); ``classic`` only when it
    differs from the adapted student (more than one round, or a thermal source)."""
    baselines, val = params.eval.baselines, params.data.has_val
    if "no_refinement" in baselines:
        steps.append(_train("baseline", Ref("warp", "coco"), datasets, teacher, val=val))
    if "classic" in baselines and n_students + int(params.thermal_source.enabled) > 1:
        steps.append(_train("classic", Ref("refine", "coco"), datasets, teacher, val=val))
    if "oracle" in baselines:
        steps.append(_train("oracle", Ref("index", "thermal_adapt"), datasets, teacher, optional=True, val=val))


def _evals(params: PipelineParams, steps: list[Step], datasets: dict[str, Ref], students: list[str]) -> None:
    """The ``val`` (when there is a val split) and ``eval`` steps scoring every model side by side."""
    columns = {"adapted": students[-1]}
    columns.update({f"round{k}": name for k, name in enumerate(students[:-1], start=1)})
    for b, step in (("classic", "classic"), ("no_refinement", "baseline"), ("oracle", "oracle"), ("source_only", "teacher")):
        if b in params.eval.baselines and any(s.name == step for s in steps):
            columns[b] = step
    models = {f"model:{c}": _model(m) for c, m in columns.items()}
    describe = _describe(params, list(columns))
    # a model is scored as it pseudo-labels (test size, TTA: the infer sections). Those sections are not
    # in eval's key: a change of them re-labels and so retrains the students, which re-keys eval by the
    # models' content (DVC also refuses a stage whose params name a key params.yaml lacks)
    sections = ("eval",)
    if params.data.has_val:     # what decides (sweeps, nightly promotion); the test split below is only reported
        steps.append(Step("val", "eval", sections, needs={"gt": Ref("index", "thermal_val"), **datasets, **models},
                          options={"columns": list(columns), "describe": describe, "split": "val"}))
    steps.append(Step("eval", "eval", sections, needs={"gt": Ref("index", "thermal_test"), **datasets, **models},
                      options={"columns": list(columns), "describe": describe}))


def _describe(params: PipelineParams, columns: list[str]) -> dict[str, str]:
    """What each evaluated model was trained on, in words (the rows of the adaptation table)."""
    rp = params.stage_params("refine")
    what = "RGB ground-truth labels" if params.rgb_source.boxes == "labels" else _rgb_predictions_words(params)
    only = f", {' and '.join(rp.classes)} only" if rp.classes else ""
    rgb = f"{what} warped, not refined" if rp.method == "none" else \
        f"{what} warped + refined ({'SAM2' if rp.uses_sam2() else 'classical'}{only})"
    thermal = params.thermal_source.enabled
    rounds = params.self_training.rounds

    mixed = "; + the RGB adapt frames with their RGB labels (mixed training)" if params.student.mix_rgb else ""

    def round_words(k: int) -> str:        # an adapted student's labels (and, with mix_rgb, its RGB frames)
        if k == 1 and not thermal:
            return rgb + mixed
        return (f"{rgb} + {'teacher' if k == 1 else f'student {k - 1}'} on thermal, fused "
                f"({params.stage_params('fuse').method}){mixed}")

    words = {"source_only": "the teacher on thermal, not adapted", "classic": f"{rgb} alone (the classic recipe)",
             "no_refinement": f"{what} warped, not refined", "oracle": "the adapt frames' thermal labels",
             "adapted": f"round {rounds}: {round_words(rounds)}" if rounds > 1 or thermal else round_words(1)}
    words.update({f"round{k}": f"round {k}: {round_words(k)}" for k in range(1, rounds)})
    return {c: words[c] for c in columns if c in words}


def _rgb_predictions_words(params: PipelineParams) -> str:
    """How the teacher's RGB predictions became labels, in the table's words: "RGB predictions ≥ t"
    with ``t`` the pseudo thresholds (one number, or per class), so an unlabelled-RGB run never reads
    like the labelled run's "RGB ground-truth labels"."""
    p = params.stage_params("pseudo")
    per_class = {c: p.thresholds.get(c, p.score_threshold) for c in p.target_classes}
    if len(set(per_class.values())) == 1:
        return f"RGB predictions ≥ {p.score_threshold:g}"
    return "RGB predictions ≥ " + " / ".join(f"{c} {t:g}" for c, t in per_class.items())


def adapted_step(params: PipelineParams) -> str:
    """The step that trains the ``adapted`` model (the last self-training round's student): what the
    nightly flow promotes and a sweep prunes on."""
    eval_step = next(s for s in plan(params) if s.name == "eval")
    return eval_step.needs["model:adapted"].step


def step_names(params: PipelineParams) -> list[str]:
    return [s.name for s in plan(params)]
