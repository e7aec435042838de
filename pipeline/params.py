"""Pipeline parameters: one typed document (``params.yaml``) for the whole adaptation run.

Why: the plain pipeline, the Prefect flow and DVC read the *same* parameters, and a bad value
must stop a run before it spends an hour on inference. So ``params.yaml`` is validated here, up
front, and every stage section is mapped onto the stage's own parameter class
(:class:`tasks.infer.InferParams`, :class:`tasks.pseudo.PseudoParams`, :class:`tasks.warp.WarpParams`,
:class:`tasks.refine.RefineParams`, :class:`detection.train_spec.TrainSpec`; all pydantic models):
those classes own their fields' validation; which fields the pipeline sets itself (file paths, the
teacher's config/checkpoint, class names) is the stage's declaration (``wired`` in its
:class:`core.stage_spec.StageSpec`, :data:`tasks.stage_specs.STAGE_SPECS`); this module
turns every failure into ONE :class:`~core.errors.InputError` naming each key
(``pseudo.score_threshold``), the bad value and what is allowed
(:func:`core.errors.input_error_from_validation`, the same wording the stage CLIs use). Section
keys are the stage fields' names, with no aliases.

Sections mirror the stages: ``data``, ``teacher``, ``infer``, ``pseudo``, ``warp``, ``refine``,
``student``, ``eval``, ``label`` (the labelling loop); ``compute`` (:class:`tasks.compute.ComputeParams`) says where
the per-image stages run and is in no step key. Overrides use dotted keys
(``--set refine.classical_score_threshold=0.5``); values are parsed as YAML scalars (``0.5`` is a float,
``true`` a bool, ``[1, 2]`` a list).
Relative paths in ``params.yaml`` are relative to the file's folder.

Every section is a pydantic model: a stage section (``infer``, ``pseudo``, ``warp``, ``refine``,
``fuse``, and the ``thermal_source``/``self_training`` overrides) is the stage class's fields minus
the pipeline-owned ones (:func:`_section_model`); :meth:`PipelineParams.stage_params` builds any
COCO stage's parameter object from its section; a training section is
:class:`detection.train_spec.TrainFields`, ``data`` extends :class:`data.splits.SplitSettings`.
Validation reads no file system; the files the parameters name are checked once at run start
(:meth:`PipelineParams.check_files`). No path enters a stage key (:meth:`PipelineParams.section`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_serializer, field_validator,
                      model_validator)

from core.errors import InputError, input_error_from_validation
from core.overrides import apply_overrides
from core.stage_params import StageParams
from core.stage_spec import StageSpec, Wire
from core.yamlio import read_mapping
from data.splits import SplitSettings
from data.synthetic_dataset import SyntheticSettings
from tasks.label_pick import PickFields, PickParams
from detection.train_spec import TrainFields, training_identity
from tasks import stage_specs
from tasks.compute import ComputeParams

def _section_model(spec: StageSpec) -> type[BaseModel]:
    """The ``params.yaml`` section of a stage: the stage class's fields minus the ones the pipeline
    sets (``spec.wired``), same types, constraints and defaults. Its values are also checked by the
    stage class itself, first (:func:`_check_stage_sections`: errors name ``section.key``)."""
    owned = list(spec.wired)
    fields: dict[str, Any] = {k: (f.annotation, f) for k, f in spec.params.model_fields.items() if k not in owned}
    name = spec.params.__name__.removesuffix("Params") + "Section"
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=f"{spec.params.__doc__}\n\n"
                        f"(the ``params.yaml`` section: without {owned}, which the pipeline sets)", **fields)


InferSection = _section_model(stage_specs.STAGE_SPECS["infer"])
PseudoSection = _section_model(stage_specs.STAGE_SPECS["pseudo"])
WarpSection = _section_model(stage_specs.STAGE_SPECS["warp"])
RefineSection = _section_model(stage_specs.STAGE_SPECS["refine"])
FuseSection = _section_model(stage_specs.STAGE_SPECS["fuse"])
#: Stand-ins for the wired values a parameter check has no run for (the teacher's config is named
#: when a step runs): the stage class's defaults stand in for the others.
_CHECK_VALUES: dict[Wire, Any] = {"model_config": "(set by the pipeline)"}


def _check_values(spec: StageSpec) -> dict[str, Any]:
    """The wired field values a parameter check (no run, no step) builds ``spec``'s parameters with."""
    return {name: _CHECK_VALUES[wire] for name, wire in spec.wired.items() if wire in _CHECK_VALUES}


def set_values(section: BaseModel | Mapping[str, Any] | None) -> dict[str, Any]:
    """The values the user set in a section (the stage class supplies the defaults), as plain JSON
    values: what a step's options hold and what is merged over another section."""
    if section is None:
        return {}
    if isinstance(section, BaseModel):
        return section.model_dump(mode="json", exclude_unset=True)
    return dict(section)


def _check_stage_sections(data: Mapping[str, Any]) -> None:
    """Each stage section of raw parameters through its stage class, before the whole document is
    parsed: a bad value is ONE InputError naming ``section.key``, the value and what is allowed."""
    for spec in stage_specs.STAGE_SPECS.values():
        if spec.section is not None and isinstance(data.get(spec.section), Mapping):
            _stage_params(spec, data[spec.section], None, _check_values(spec))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataRoot(_Strict):
    """A generic paired folder (``data.adapters.folder`` layout) and its dataset version name."""

    path: Path
    version: str

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.resolve()          # that it exists is checked at run start (PipelineParams.check_files)


#: The generator's settings (``data.synthetic``), defined beside the generator.
SyntheticData = SyntheticSettings


class DataSection(SplitSettings):
    """Where the paired data comes from: ``roots`` (one or more paired folders) or ``synthetic``;
    classes and splits are :class:`data.splits.SplitSettings` (the data layer cuts the splits)."""

    roots: list[DataRoot] = Field(default_factory=list)
    synthetic: SyntheticData | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if bool(self.roots) == (self.synthetic is not None):
            raise ValueError("give exactly one of data.roots (paired folders) or data.synthetic (generated demo data)")
        versions = [r.version for r in self.roots]
        if len(set(versions)) != len(versions):
            raise ValueError(f"data.roots versions must be unique, got {versions}")
        return self


class TeacherSection(_Strict):
    """The RGB detector: the user's ``config`` + ``checkpoint``, or ``train`` one on the labelled
    RGB adapt split (a TrainSpec section without datasets/work_dir/classes)."""

    config: str | None = None
    checkpoint: Path | None = None
    train: TrainFields | None = None

    @property
    def config_is_file(self) -> bool:
        """Whether ``config`` names a file (a ``.py`` or a path) rather than a config bundled with mmdet."""
        cfg = self.config
        return cfg is not None and (cfg.endswith(".py") or "/" in cfg or os.sep in cfg)

    @model_validator(mode="after")
    def _mode(self) -> TeacherSection:
        if (self.config is not None) == (self.train is not None):
            raise ValueError("give exactly one of teacher.config (+ teacher.checkpoint) or teacher.train")
        if self.checkpoint is not None:
            if self.config is None:
                raise ValueError("teacher.checkpoint needs teacher.config")
            self.checkpoint = self.checkpoint.resolve()
        if self.train is not None and self.train.base_model is None:
            raise ValueError("teacher.train needs base_model (e.g. base_model: yolox_tiny_8xb8-300e_coco)")
        return self

    def missing_files(self) -> list[str]:
        """What this section names that does not exist (checked at run start, not at validation)."""
        missing = []
        if self.checkpoint is not None and not self.checkpoint.is_file():
            missing.append(f"teacher.checkpoint {self.checkpoint} does not exist")
        # a config *path* is checked at run start, not at the first step that builds the model (after the
        # data steps); a bundled mmdet name (no .py, no folder) is resolved when the model is built
        if self.config_is_file and not Path(str(self.config)).expanduser().is_file():
            missing.append(f"teacher.config {self.config} does not exist (give the path of an mmdet .py config, "
                           "or a config name bundled with mmdet such as yolox_tiny_8xb8-300e_coco)")
        return missing


class StudentSection(_Strict):
    """Thermal student training (a TrainSpec section) and whether it starts from the teacher's weights.
    ``mix_rgb``: the adapted students (every self-training round) also train on the labelled RGB
    adapt frames with their RGB ground truth, next to the pseudo-labelled thermal frames."""

    init_from_teacher: bool = True
    mix_rgb: bool = False
    train: TrainFields = Field(default_factory=TrainFields)


class EvalSection(_Strict):
    """Evaluation on the thermal test split (ground truth) with the baselines side by side:
    ``source_only`` (the teacher on thermal), ``no_refinement`` (a student on warped RGB labels),
    ``classic`` (a student on refined RGB labels alone: the classic recipe, when a thermal source
    or self-training changes what ``adapted`` trains on) and ``oracle`` (a student on the thermal
    labels of the adapt frames — an upper bound, shown only when those labels exist)."""

    baselines: list[Literal["source_only", "no_refinement", "classic", "oracle"]] = Field(
        default_factory=lambda: ["source_only", "no_refinement"])
    batch_size: int = Field(default=8, ge=1)
    metrics: list[str] = Field(default_factory=lambda: ["mAP", "mAP_50"])
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description=(
        "where the evaluated models run (not taken from a training section: evaluating on the CPU a student "
        "trained on a GPU is a choice of its own)"))


class RgbSourceSection(_Strict):
    """Which RGB boxes become the RGB pseudo-labels that are warped to thermal.

    - ``predictions`` (default): the teacher run on the RGB adapt frames, confidence-filtered
      by ``pseudo`` — for RGB frames nobody labelled.
    - ``labels``: the RGB adapt frames' own labels (the data set's ``labels_rgb``, score 1),
      warped and refined exactly like predictions; the RGB inference and ``pseudo`` steps are
      not run. Why: with labelled RGB frames the teacher's RGB predictions only add misses and
      false boxes (msrs-bench adapt frames, car labels fused with the thermal source: F1 0.60
      from predictions, 0.76 from the RGB labels; ``benchmarks/RESULTS.md``). A run whose RGB
      adapt frames have no labels stops with an error instead of training on nothing.
    """

    boxes: Literal["predictions", "labels"] = "predictions"


class ThermalSourceSection(_Strict):
    """A detector run on the thermal adapt frames as a second pseudo-label source, fused with the
    RGB one (``fuse``). Round 1 uses the teacher; later self-training rounds use the previous
    student. ``pseudo``: pseudo-label parameters of this source (keys of ``pseudo``, e.g. per-class
    ``thresholds``), merged over the ``pseudo`` section; ``infer``: inference parameters of this
    source (keys of ``infer``, e.g. ``tta: [flip]``), merged over the ``infer`` section."""

    enabled: bool = False
    pseudo: PseudoSection = Field(default_factory=PseudoSection)
    infer: InferSection = Field(default_factory=InferSection)

    @field_serializer("pseudo", "infer")
    def _only_set(self, v: BaseModel) -> dict[str, Any]:
        return set_values(v)        # overrides: a dumped document must set the same keys, no more


class SelfTrainingSection(_Strict):
    """Self-training: round k's student labels the thermal adapt frames, fused with the RGB labels,
    for student k+1. ``init``: student k+1 starts from the teacher's weights or from student k's
    (``previous``: on msrs-bench without RGB labels it lowered student 2's fused label F1 on the adapt
    frames, person -0.014 and car -0.012 over 3 seeds, so ``params/real_unlabelled.yaml`` starts from
    the teacher; not measured with RGB labels).
    ``pseudo``: pseudo-label parameters of the students' own predictions (rounds 2 and later),
    merged over ``thermal_source.pseudo`` (a key given here replaces that key, e.g. the whole
    ``thresholds`` mapping). Why: a student's scores are not calibrated like the teacher's
    (msrs-bench adapt frames: the fused person labels' F1 is best at 0.15 for the COCO teacher and
    at 0.3 for student 1; ``benchmarks/RESULTS.md``). ``infer``: how a student infers when it labels
    the thermal adapt frames (keys of ``infer``, e.g. ``tta_sizes: [[960, 960]]``), merged over
    ``thermal_source.infer``. Why apart from the teacher's: a second, larger test size finds the small
    people a student misses at 640 px but costs the COCO teacher F1 (msrs-bench adapt frames: student 1's
    fused person F1 0.708 -> 0.735, the teacher's 0.627 -> 0.620). The eval scores every model with
    ``infer`` + ``thermal_source.infer`` alone, so that the columns stay comparable (a labelling-time
    setting, like refinement; test-time augmentation at deployment is the user's own choice)."""

    rounds: int = Field(default=1, ge=1, le=10)
    init: Literal["teacher", "previous"] = "teacher"
    pseudo: PseudoSection = Field(default_factory=PseudoSection)
    infer: InferSection = Field(default_factory=InferSection)

    @field_serializer("pseudo", "infer")
    def _only_set(self, v: BaseModel) -> dict[str, Any]:
        return set_values(v)        # overrides: a dumped document must set the same keys, no more

    def round_pseudo(self, thermal: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """The pseudo-label overrides of a student's round (``thermal``: ``thermal_source.pseudo``):
        the keys set in either, this section's winning, as plain JSON values."""
        return _over(thermal, self.pseudo)

    def round_infer(self, thermal: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """The inference overrides of a student labelling the thermal adapt frames (rounds >= 2;
        ``thermal``: ``thermal_source.infer``): the keys set in either, this section's winning."""
        return _over(thermal, self.infer)


def _over(base: Mapping[str, Any] | BaseModel, own: BaseModel) -> dict[str, Any]:
    """The keys set in ``base`` or ``own``, ``own``'s winning, as plain JSON values."""
    return {**set_values(base), **set_values(own)}


class LabelSection(PickFields):
    """The labelling loop (``rgb2thermal label pick`` / ``label import``, README "The labelling loop").

    - ``pick_n``: with ``pick_n > 0`` the plan ends with a ``pick`` step that chooses that many thermal
      adapt frames to label (the most uncertain ones, or with ``purpose: val`` a random draw for a val
      split; :mod:`tasks.label_pick`: ``seed``, ``band``, ``weights``, ``balance_daynight``, ``purpose``)
      and exports them as a CVAT / Label Studio task.
    - ``override``: each student trains on its labels with the boxes of the frames a person labelled
      (``label import --as-training``) in place of their pseudo-labels (an ``override`` step per round).
    - ``human_repeat``: with ``override``, each frame a person labelled is in the students' training set
      this many times (copies with the same boxes), so that a few trusted frames weigh more against many
      pseudo-labelled ones; 1 (default): once, like any frame. A recipe may set it before anyone labelled
      (it acts once ``override`` is on). The ``override`` steps are keyed on it only when it is set, so
      runs that leave it alone keep their students. Both shipped recipes set 3, taken on each by the label rule
      on the adapt frames (``benchmarks/RESULTS.md`` "Without RGB labels", section 3: 20 picked frames, fused
      round-3 F1 person +0.028 / car +0.010 without RGB labels, +0.014 / +0.015 with them); other values unmeasured.
    """

    pick_n: int = Field(default=0, ge=0)
    override: bool = False
    human_repeat: int = Field(default=1, ge=1, le=20)


class PipelineParams(_Strict):
    """The whole ``params.yaml``, every section typed. A stage's parameter object is its section's
    values (those the user set) + the pipeline's own values, built by the stage class."""

    data: DataSection
    teacher: TeacherSection
    infer: InferSection = Field(default_factory=InferSection)
    pseudo: PseudoSection = Field(default_factory=PseudoSection)
    warp: WarpSection = Field(default_factory=WarpSection)
    refine: RefineSection = Field(default_factory=RefineSection)
    student: StudentSection = Field(default_factory=StudentSection)
    rgb_source: RgbSourceSection = Field(default_factory=RgbSourceSection)
    thermal_source: ThermalSourceSection = Field(default_factory=ThermalSourceSection)
    fuse: FuseSection = Field(default_factory=FuseSection)
    self_training: SelfTrainingSection = Field(default_factory=SelfTrainingSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    label: LabelSection = Field(default_factory=LabelSection)
    #: where the per-image stages run (local Dask workers, the user's scheduler, or here): in NO step
    #: key and no DVC ``params`` list, since it changes where frames are computed, never the outputs
    compute: ComputeParams = Field(default_factory=ComputeParams)

    def stage_params(self, kind: str, overrides: Mapping[str, Any] | BaseModel | None = None,
                     **wired: Any) -> StageParams:
        """The parameter object a step of COCO stage ``kind`` runs with, validated by the stage's class.

        A step instance may run a stage with its own values (``overrides``, the step's ``params``
        option: ``thermal_source.infer`` for the thermal source's inference); they are merged over
        the section and validated exactly like it (errors still name ``section.key``).

        Args:
            kind: a step kind of :data:`tasks.stage_specs.STAGE_SPECS`.
            overrides: values merged over the kind's section (keys of that section), or None.
            **wired: the values the pipeline supplies, by field name: every ``spec.wired`` field
                (a missing one is the target classes for a ``classes`` wire, which these parameters
                hold, else the class default), and ``spec.filled`` fields, used where the section
                and ``overrides`` leave the field unset or null (``registry_dir``).

        Returns:
            The stage's parameter object (e.g. :class:`tasks.infer.InferParams`).

        Raises:
            InputError: a bad value, or a user-set field the pipeline sets itself.
        """
        spec = stage_specs.STAGE_SPECS[kind]
        section = set_values(getattr(self, spec.section)) if spec.section is not None else {}
        classes = {name: tuple(self.data.classes) for name, wire in spec.wired.items() if wire == "classes"}
        return _stage_params(spec, section, overrides, {**classes, **wired})

    def eval_infer_params(self, config: Any, checkpoint: Any, source: str) -> StageParams:
        """How the ``val`` and ``eval`` steps run a model: as it pseudo-labels (the ``infer`` section with
        ``thermal_source.infer``: test size, TTA), at ``eval.batch_size`` on ``eval.device``; ``source``:
        ``thermal_teacher`` or ``thermal_student``."""
        return self.stage_params("infer", {**set_values(self.thermal_source.infer), "batch_size": self.eval.batch_size,
                                           "device": self.eval.device}, config=config, checkpoint=checkpoint, source=source)

    def pick_params(self) -> PickParams:
        """The ``pick`` step's parameters (``label`` section; ``n`` = ``label.pick_n``)."""
        lab = self.label.model_dump(exclude={"pick_n", "override", "human_repeat"})
        return PickParams.validated({**lab, "n": max(1, self.label.pick_n)}, "params label", prefix="label")

    def train_fields(self, role: Literal["teacher", "student"]) -> TrainFields:
        """The training section of ``role``; a student's ``base_model`` defaults to the teacher's
        (its config, or the base model it trains from)."""
        if role == "teacher":
            assert self.teacher.train is not None, "the teacher is the user's model, not trained"
            return self.teacher.train
        fields = self.student.train
        if fields.base_model is None:
            t = self.teacher
            base = t.config if t.config is not None else (t.train.base_model if t.train is not None else None)
            fields = TrainFields.model_validate({**fields.model_dump(exclude_unset=True), "base_model": base})
        return fields

    def check_files(self) -> None:
        """Every file and folder the parameters name exists: checked once at run start, before any
        step (and by ``rgb2thermal run --check``), not by the validators, so parameters can be
        validated on a machine without the data (the demo, a CI check of a recipe)."""
        missing = [f"data.roots[{k}].path: dataset folder {r.path} does not exist"
                   for k, r in enumerate(self.data.roots) if not r.path.is_dir()]
        missing += self.teacher.missing_files()
        if missing:
            raise InputError("; ".join(missing), "params", "fix the paths in the parameters (relative paths are "
                             "relative to the params file's folder)")

    def validate_stages(self) -> None:
        """Build every stage's parameter object once, so bad values fail before any work starts."""
        def check(kind: str, overrides: Mapping[str, Any] | BaseModel | None = None) -> None:
            self.stage_params(kind, overrides, **_check_values(stage_specs.STAGE_SPECS[kind]))

        for kind in stage_specs.STAGE_SPECS:
            check(kind)
        check("pseudo", self.thermal_source.pseudo)
        check("pseudo", self.self_training.round_pseudo(self.thermal_source.pseudo))
        check("infer", self.thermal_source.infer)
        check("infer", self.self_training.round_infer(self.thermal_source.infer))
        from tasks.evaluate import METRICS

        bad = [m for m in self.eval.metrics if m not in METRICS]
        if bad:
            raise InputError(f"eval.metrics has unknown metrics {bad}", "params eval.metrics", f"choose from {list(METRICS)}")

    def section(self, name: str) -> Any:
        """One section as plain JSON values (the part of a stage key that comes from parameters).

        ``name`` may be dotted (``self_training.pseudo``): a step that reads one field of a section
        keys (and, in ``dvc.yaml``, depends) on that field only, as DVC's dotted params do.
        Paths never enter it: every file or folder a parameter names is an ``external`` input of the
        steps that read it, keyed by its *content* (:func:`_without_paths`), so a dataset folder or
        checkpoint moved with the same content reuses every step (``tests/test_pipeline_moved.py``).
        """
        value: Any = _without_paths(self.model_dump(mode="json"))
        for part in name.split("."):
            value = value[part]
        return value


#: (section, field) of every parameter that names a file or folder; keyed by content, as an external input.
PATH_FIELDS = (("teacher", "checkpoint"), ("warp", "registry_dir"), ("refine", "sam2_checkpoint"))


def _without_paths(dump: dict[str, Any]) -> dict[str, Any]:
    """``dump`` (``model_dump(mode="json")``) without the values that are paths: dataset roots keep
    their version name, a teacher config keeps its name when it is a bundled mmdet name (no ``.py``);
    the training sections without their rendezvous address/port and process counts left at 1
    (:func:`detection.train_spec.training_identity`)."""
    data = dump["data"]
    out = {**dump, "data": {**data, "roots": [{"version": r["version"]} for r in data["roots"]]}}
    for sec, key in PATH_FIELDS:
        if isinstance(out.get(sec), dict) and key in out[sec]:
            out[sec] = {k: v for k, v in out[sec].items() if k != key}
    cfg = out["teacher"].get("config")
    if isinstance(cfg, str) and (cfg.endswith(".py") or "/" in cfg or os.sep in cfg):
        out["teacher"] = {**out["teacher"], "config": "(a file: keyed by its content)"}
    for role in ("teacher", "student"):         # rendezvous address/port, process counts at 1: not in keys
        if isinstance(out[role].get("train"), dict):
            out[role] = {**out[role], "train": training_identity(out[role]["train"])}
    return out


def _merged(section: Mapping[str, Any], overrides: Mapping[str, Any] | BaseModel | None, where: str) -> dict[str, Any]:
    if isinstance(overrides, BaseModel):
        overrides = set_values(overrides)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise InputError(f"parameter overrides for '{where}' must be a mapping of keys to values, got {overrides!r}",
                         f"params {where}", f"e.g. {{min_size: 2}} (keys of '{where}')")
    return {**section, **(overrides or {})}


def _stage_params(spec: StageSpec, section: Mapping[str, Any], overrides: Mapping[str, Any] | BaseModel | None,
                  wired: Mapping[str, Any]) -> StageParams:
    """``spec.params(**section, **overrides, **wired)`` as one InputError naming ``where.key`` on failure.

    ``spec.wired`` keys are filled by the pipeline: a user setting one would be silently
    overwritten, so it is refused, with the keys that may be set. ``spec.filled`` keys take the
    pipeline's value only where the user's is unset or null.
    """
    where = spec.section or spec.kind
    unknown = sorted(set(wired) - set(spec.wired) - set(spec.filled))
    if unknown:
        raise TypeError(f"{spec.kind}: {unknown} are not fields the pipeline supplies (StageSpec.wired / filled)")
    values = _merged(section, overrides, where)
    taken = sorted(set(values) & set(spec.wired))
    if taken:
        allowed = [k for k in spec.params.model_fields if k not in spec.wired]
        raise InputError(f"{[f'{where}.{k}' for k in taken]} are set by the pipeline itself", f"params {where}",
                         f"remove them; allowed keys in '{where}': {allowed}")
    values.update({k: v for k, v in wired.items() if k in spec.wired or values.get(k) is None})
    return spec.params.validated(values, f"params {where}", prefix=where, hidden=tuple(spec.wired),
                                 fix=f"fix the listed keys of '{where}' (see params.yaml)")


def _pydantic_error(exc: ValidationError, where: str, model: type[BaseModel] | None = None) -> InputError:
    """The pipeline's wording of a ValidationError (``where``: the dotted section, '' = top level)."""
    return input_error_from_validation(exc, f"params {where}" if where else "params", prefix=where, model=model,
                                       fix="fix the listed keys (see params.yaml and flows/README.md)")


def _rebase_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in params.yaml are relative to its folder (so `dvc repro` and a run agree)."""
    def fix(v: Any) -> Any:
        return str(base / v) if isinstance(v, str) and v and not Path(v).is_absolute() else v

    d = dict(data)
    data_sec = dict(d.get("data") or {})
    if isinstance(data_sec.get("roots"), list):
        data_sec["roots"] = [{**r, "path": fix(r.get("path"))} if isinstance(r, dict) else r for r in data_sec["roots"]]
        d["data"] = data_sec
    teacher = dict(d.get("teacher") or {})
    if "checkpoint" in teacher:
        teacher["checkpoint"] = fix(teacher["checkpoint"])
    if isinstance(teacher.get("config"), str) and teacher["config"].endswith(".py"):
        teacher["config"] = fix(teacher["config"])
    if teacher:
        d["teacher"] = teacher
    for sec, keys in (("warp", ("registry_dir",)), ("refine", ("sam2_checkpoint",))):
        if isinstance(d.get(sec), dict):
            d[sec] = {k: fix(v) if k in keys else v for k, v in d[sec].items()}
    return d


def params_from_dict(data: dict[str, Any], where: str = "params") -> PipelineParams:
    """Validate a plain mapping; every problem becomes one InputError before any work starts."""
    if not isinstance(data, dict):
        raise InputError("parameters must be a mapping of sections", where, "see params.yaml")
    _check_stage_sections(data)
    try:
        params = PipelineParams.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(exc, "", PipelineParams) from None
    params.validate_stages()
    return params


def read_params_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw parameter mapping of a YAML file, relative paths rebased onto the file's folder."""
    p = Path(path)
    return _rebase_paths(read_mapping(p, "parameter", "see params.yaml"), p.resolve().parent)


def load_params(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> PipelineParams:
    """Read ``params.yaml`` (or take ``data``), apply ``--set`` overrides, validate everything."""
    if data is None:
        if path is None:
            raise InputError("no parameters given", "params", "pass --params params.yaml")
        data = read_params_file(path)
    data = apply_overrides(data, overrides or [])
    return params_from_dict(data, str(path) if path else "params")
