"""Pipeline parameters: one typed document (``params.yaml``) for the whole adaptation run.

Why: the plain pipeline, the Prefect flow and DVC read the *same* parameters, and a bad value
must stop a run before it spends an hour on inference. So ``params.yaml`` is validated here, up
front, and every stage section is mapped onto the stage's own parameter class
(:class:`tasks.infer.InferParams`, :class:`tasks.pseudo.PseudoParams`, :class:`tasks.warp.WarpParams`,
:class:`tasks.refine.RefineParams`, :class:`detection.train_spec.TrainSpec`; all pydantic models):
those classes own their fields' validation, this module only decides which fields a user may
set (the pipeline fills the rest: file paths, the teacher's config/checkpoint, class names) and
turns every failure into ONE :class:`~core.errors.InputError` naming each key
(``pseudo.score_threshold``), the bad value and what is allowed
(:func:`core.errors.input_error_from_validation`, the same wording the stage CLIs use). Section
keys are the stage fields' names, with no aliases.

Sections mirror the stages: ``data``, ``teacher``, ``infer``, ``pseudo``, ``warp``, ``refine``,
``student``, ``eval``. Overrides use dotted keys (``--set refine.classical_score_threshold=0.5``);
values are parsed as YAML scalars (``0.5`` is a float, ``true`` a bool, ``[1, 2]`` a list).
Relative paths in ``params.yaml`` are relative to the file's folder.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import InputError, input_error_from_validation
from core.overrides import apply_overrides
from core.stage_params import StageParams
from core.yamlio import read_mapping
from tasks.fuse import FuseParams
from tasks.infer import InferParams
from tasks.pseudo import PseudoParams
from tasks.refine import RefineParams
from detection.train_spec import DatasetSpec, TrainSpec
from tasks.warp import WarpParams

#: TrainSpec fields the pipeline sets itself (datasets, output folder, classes, initial weights).
_TRAIN_PIPELINE_FIELDS = ("train", "val", "test", "work_dir", "classes", "load_from", "resume")
#: Stage-parameter fields the pipeline sets itself (``warp.registry_dir`` is the user's, with a
#: pipeline default: see ``PipelineParams.warp_params``).
_INFER_PIPELINE_FIELDS = ("config", "checkpoint", "source")
_REFINE_PIPELINE_FIELDS = ("image_root",)
_PSEUDO_PIPELINE_FIELDS = ("target_classes",)

_P = TypeVar("_P", bound=StageParams)


class _TrainFields(TrainSpec):
    """TrainSpec with the pipeline-owned fields made optional: validates a user's training
    section with TrainSpec's own validators, before any dataset exists."""

    train: DatasetSpec | None = None  # type: ignore[assignment]
    work_dir: Path | None = None  # type: ignore[assignment]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataRoot(_Strict):
    """A generic paired folder (``data.adapters.folder`` layout) and its dataset version name."""

    path: Path
    version: str

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"dataset folder {v} does not exist")
        return v.resolve()


class SyntheticData(_Strict):
    """The deterministic synthetic paired-scene generator (demo and tests). Sizes ``(width, height)`` px."""

    n_pairs: int = Field(default=40, ge=2)
    seed: int = 0
    rgb_size: tuple[int, int] = (320, 256)
    thermal_size: tuple[int, int] = (256, 208)
    night_fraction: float = Field(default=0.5, ge=0, le=1)
    night_hidden_people: float = Field(default=0.0, ge=0, le=1, description=(
        "share of night people drawn in thermal only (invisible in RGB and absent from the RGB labels), "
        "as most night people on real pairs are"))
    version: str = "synthetic"


class DataSection(_Strict):
    """Where the paired data comes from: ``roots`` (one or more paired folders) or ``synthetic``."""

    roots: list[DataRoot] = Field(default_factory=list)
    synthetic: SyntheticData | None = None
    classes: list[str] = Field(default_factory=lambda: ["person", "car"], min_length=1)
    adapt_split: str = "adapt"
    test_split: str = "test"
    val_split: str | None = Field(default=None, description=(
        "a split of pairs WITH thermal labels used for every decision (best checkpoints, sweeps, nightly "
        "promotion); the test split is only ever reported"))
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0, description=(
        "or: carve this fraction of the adapt pairs out as the val split (chosen by a hash of the pair id and "
        "val_seed, so the same pairs are chosen on every machine); they leave the adapt split"))
    val_seed: int = 0

    @property
    def has_val(self) -> bool:
        """Whether a validation split exists (decisions use it; without it they say what they used instead)."""
        return self.val_split is not None or self.val_fraction > 0

    @model_validator(mode="after")
    def _one_source(self) -> "DataSection":
        if bool(self.roots) == (self.synthetic is not None):
            raise ValueError("give exactly one of data.roots (paired folders) or data.synthetic (generated demo data)")
        if self.val_split is not None and self.val_fraction > 0:
            raise ValueError("give at most one of data.val_split (a labelled split) or data.val_fraction (carved "
                             "from the adapt split)")
        if self.val_split is not None and self.val_split in (self.adapt_split, self.test_split):
            raise ValueError(f"data.val_split '{self.val_split}' must differ from the adapt and test splits "
                             "(use data.val_fraction to carve val frames out of the adapt split)")
        versions = [r.version for r in self.roots]
        if len(set(versions)) != len(versions):
            raise ValueError(f"data.roots versions must be unique, got {versions}")
        return self


class TeacherSection(_Strict):
    """The RGB detector: the user's ``config`` + ``checkpoint``, or ``train`` one on the labelled
    RGB adapt split (a TrainSpec section without datasets/work_dir/classes)."""

    config: str | None = None
    checkpoint: Path | None = None
    train: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _mode(self) -> "TeacherSection":
        if (self.config is not None) == (self.train is not None):
            raise ValueError("give exactly one of teacher.config (+ teacher.checkpoint) or teacher.train")
        if self.checkpoint is not None:
            if self.config is None:
                raise ValueError("teacher.checkpoint needs teacher.config")
            if not self.checkpoint.is_file():
                raise ValueError(f"teacher.checkpoint {self.checkpoint} does not exist")
            self.checkpoint = self.checkpoint.resolve()
        # a config *path* is checked now, not at the first step that builds the model (after the data
        # steps); a bundled mmdet name (no .py, no folder) is resolved when the model is built
        cfg = self.config
        if cfg is not None and (cfg.endswith(".py") or "/" in cfg or os.sep in cfg) \
                and not Path(cfg).expanduser().is_file():
            raise ValueError(f"teacher.config {cfg} does not exist (give the path of an mmdet .py config, or a "
                             "config name bundled with mmdet such as yolox_tiny_8xb8-300e_coco)")
        return self


class StudentSection(_Strict):
    """Thermal student training (a TrainSpec section) and whether it starts from the teacher's weights.
    ``mix_rgb``: the adapted students (every self-training round) also train on the labelled RGB
    adapt frames with their RGB ground truth, next to the pseudo-labelled thermal frames."""

    init_from_teacher: bool = True
    mix_rgb: bool = False
    train: dict[str, Any] = Field(default_factory=dict)


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
    pseudo: dict[str, Any] = Field(default_factory=dict)
    infer: dict[str, Any] = Field(default_factory=dict)


class SelfTrainingSection(_Strict):
    """Self-training: round k's student labels the thermal adapt frames, fused with the RGB labels,
    for student k+1. ``init``: student k+1 starts from the teacher's weights or from student k's.
    ``pseudo``: pseudo-label parameters of the students' own predictions (rounds 2 and later),
    merged over ``thermal_source.pseudo`` (a key given here replaces that key, e.g. the whole
    ``thresholds`` mapping). Why: a student's scores are not calibrated like the teacher's
    (msrs-bench adapt frames: the fused person labels' F1 is best at 0.15 for the COCO teacher and
    at 0.3 for student 1; ``benchmarks/RESULTS.md``)."""

    rounds: int = Field(default=1, ge=1, le=10)
    init: Literal["teacher", "previous"] = "teacher"
    pseudo: dict[str, Any] = Field(default_factory=dict)

    def round_pseudo(self, thermal: Mapping[str, Any]) -> dict[str, Any]:
        """The pseudo-label overrides of a student's round (``thermal``: ``thermal_source.pseudo``)."""
        return {**thermal, **self.pseudo}


class PipelineParams(_Strict):
    """The whole ``params.yaml``. Stage sections are plain mappings validated by the stage classes."""

    data: DataSection
    teacher: TeacherSection
    infer: dict[str, Any] = Field(default_factory=dict)
    pseudo: dict[str, Any] = Field(default_factory=dict)
    warp: dict[str, Any] = Field(default_factory=dict)
    refine: dict[str, Any] = Field(default_factory=dict)
    student: StudentSection = Field(default_factory=StudentSection)
    rgb_source: RgbSourceSection = Field(default_factory=RgbSourceSection)
    thermal_source: ThermalSourceSection = Field(default_factory=ThermalSourceSection)
    fuse: dict[str, Any] = Field(default_factory=dict)
    self_training: SelfTrainingSection = Field(default_factory=SelfTrainingSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    # ---- stage parameter objects (validated by their own classes) -----------------------
    # ``overrides``: a pipeline step instance may run a stage with its own values; they are
    # merged over the section and validated exactly like it (errors still name ``section.key``).
    def infer_params(self, config: str, checkpoint: str | None, source: str = "rgb_teacher",
                     overrides: Mapping[str, Any] | None = None) -> InferParams:
        return _stage_params(InferParams, "infer", self.infer, overrides, _INFER_PIPELINE_FIELDS,
                             config=config, checkpoint=checkpoint, source=source)

    def pseudo_params(self, overrides: Mapping[str, Any] | None = None) -> PseudoParams:
        return _stage_params(PseudoParams, "pseudo", self.pseudo, overrides, _PSEUDO_PIPELINE_FIELDS,
                             target_classes=tuple(self.data.classes))

    def warp_params(self, default_registry: Path | None, overrides: Mapping[str, Any] | None = None) -> WarpParams:
        """``warp.registry_dir`` is the user's to set; unset (or null) it is ``default_registry``."""
        values = _merged(self.warp, overrides, "warp")
        if values.get("registry_dir") is None:
            values["registry_dir"] = default_registry
        return _stage_params(WarpParams, "warp", values, None, ())

    def refine_params(self, overrides: Mapping[str, Any] | None = None) -> RefineParams:
        return _stage_params(RefineParams, "refine", self.refine, overrides, _REFINE_PIPELINE_FIELDS)

    def fuse_params(self, overrides: Mapping[str, Any] | None = None) -> FuseParams:
        return _stage_params(FuseParams, "fuse", self.fuse, overrides, ())

    def teacher_train_fields(self) -> dict[str, Any]:
        return _train_fields(self.teacher.train or {}, "teacher.train")

    def student_train_fields(self) -> dict[str, Any]:
        fields = _train_fields(self.student.train, "student.train")
        if "base_model" not in fields:
            fields["base_model"] = (self.teacher.config if self.teacher.config is not None
                                    else self.teacher_train_fields()["base_model"])
        return fields

    def validate_stages(self) -> None:
        """Build every stage's parameter object once, so bad values fail before any work starts."""
        self.infer_params("(set by the pipeline)", None)
        self.pseudo_params()
        self.warp_params(None)
        self.refine_params()
        self.fuse_params()
        self.pseudo_params(self.thermal_source.pseudo)
        self.pseudo_params(self.self_training.round_pseudo(self.thermal_source.pseudo))
        self.infer_params("(set by the pipeline)", None, overrides=self.thermal_source.infer)
        if self.teacher.train is not None:
            if "base_model" not in self.teacher.train:
                raise InputError("teacher.train needs base_model", "params teacher.train",
                                 "e.g. base_model: yolox_tiny_8xb8-300e_coco")
            self.teacher_train_fields()
        self.student_train_fields()
        from tasks.evaluate import METRICS

        bad = [m for m in self.eval.metrics if m not in METRICS]
        if bad:
            raise InputError(f"eval.metrics has unknown metrics {bad}", "params eval.metrics", f"choose from {list(METRICS)}")

    def section(self, name: str) -> Any:
        """One section as plain JSON values (the part of a stage key that comes from parameters).

        ``name`` may be dotted (``self_training.pseudo``): a step that reads one field of a section
        keys (and, in ``dvc.yaml``, depends) on that field only, as DVC's dotted params do.
        """
        value: Any = self.model_dump(mode="json")
        for part in name.split("."):
            value = value[part]
        return value


def _train_fields(section: dict[str, Any], where: str) -> dict[str, Any]:
    owned = sorted(set(section) & set(_TRAIN_PIPELINE_FIELDS))
    if owned:
        raise InputError(f"{where} sets {owned}, which the pipeline sets itself", f"params {where}",
                         f"remove {owned}; allowed: {sorted(set(TrainSpec.model_fields) - set(_TRAIN_PIPELINE_FIELDS))}")
    try:
        _TrainFields.model_validate({"base_model": "(checked when training)", **section})
    except ValidationError as exc:
        raise _pydantic_error(exc, where, _TrainFields) from None
    return dict(section)


def _merged(section: Mapping[str, Any], overrides: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    if overrides is not None and not isinstance(overrides, Mapping):
        raise InputError(f"parameter overrides for '{where}' must be a mapping of keys to values, got {overrides!r}",
                         f"params {where}", f"e.g. {{min_size: 2}} (keys of '{where}')")
    return {**section, **(overrides or {})}


def _stage_params(model: type[_P], where: str, section: Mapping[str, Any], overrides: Mapping[str, Any] | None,
                  owned: tuple[str, ...], **fixed: Any) -> _P:
    """``model(**section, **overrides, **fixed)`` as one InputError naming ``where.key`` on failure.

    ``owned`` keys are filled by the pipeline (``fixed``): a user setting one would be silently
    overwritten, so it is refused, with the keys that may be set.
    """
    values = _merged(section, overrides, where)
    taken = sorted(set(values) & set(owned))
    if taken:
        allowed = [k for k in model.model_fields if k not in owned]
        raise InputError(f"{[f'{where}.{k}' for k in taken]} are set by the pipeline itself", f"params {where}",
                         f"remove them; allowed keys in '{where}': {allowed}")
    return model.validated({**values, **fixed}, f"params {where}", prefix=where, hidden=owned,
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
