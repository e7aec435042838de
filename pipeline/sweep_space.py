"""A sweep's declaration (``sweep.yaml``): the search space over dotted ``params.yaml`` keys, the
objective, sampler, pruner and budget — validated before the first trial.

Why a declaration and not code: researchers used to edit thresholds and learning rates by hand
and tune on the frames they reported. A sweep is now one YAML file; everything wrong with it
(an unknown key, an empty range, a key the pipeline owns, a value a stage would reject, base
parameters without a val split) fails here, naming the key, before any trial spends an hour.

Example::

    params: params/real.yaml               # base parameters (relative to this file)
    study: labels-and-lr
    objective: adapted.all.mAP_50          # a metric of the `val` step (the val split), higher is better
    sampler: {seed: 0, n_startup_trials: 4}
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 3}
    budget: {trials: 12, seconds: null}
    enqueue_base: true                     # trial 0 = the base parameters as they are
    fixed: {student.train.epochs: 15}      # applied to every trial
    space:
      thermal_source.pseudo.thresholds.person: {low: 0.15, high: 0.5}
      student.train.lr: {low: 0.0003, high: 0.003, log: true}
      fuse.method: {choices: [agreement, wbf]}
      self_training.rounds: {low: 1, high: 2, type: int}
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from core.errors import InputError, input_error_from_validation
from core.stage_params import StageParams
from core.yamlio import read_mapping
from core.overrides import set_dotted
from pipeline.params import PipelineParams, params_from_dict, read_params_file

#: keys a sweep may not search: the data (the val split itself would move), what is reported
#: (``eval``), the user's models, and what the sweep sets itself (per-epoch validation for pruning).
OWNED_PREFIXES = ("data", "eval", "teacher.config", "teacher.checkpoint")
#: set on every trial: validation after every epoch, so the pruner sees a value per epoch.
SWEEP_SETS = {"student.train.val_interval": 1}


class Dim(StageParams):
    """One searched key: ``choices`` (categorical), or ``low``/``high`` (float, or ``type: int``),
    optionally on a ``log`` scale or with a ``step``."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    type: Literal["float", "int"] = "float"
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _shape(self) -> Dim:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices, or both low and high")
        if not self.low < self.high:
            raise ValueError(f"empty range: low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int range needs integer low/high")
        return self

    def values_to_check(self) -> list[Any]:
        """The values a stage must accept: every choice, or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step) if self.step else 1)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log, step=self.step)


class SamplerSpec(StageParams):
    """Optuna's TPE sampler; ``seed`` makes one worker's suggestions reproducible."""

    seed: int = 0
    n_startup_trials: int = Field(default=4, ge=1)


class PrunerSpec(StageParams):
    """Pruning on the adapted student's per-epoch val mAP_50: ``median`` (Optuna MedianPruner),
    ``hyperband`` (HyperbandPruner over epochs), ``threshold`` (prune below ``lower``) or ``none``."""

    type: Literal["median", "hyperband", "threshold", "none"] = "median"
    n_startup_trials: int = Field(default=2, ge=0)
    n_warmup_steps: int = Field(default=3, ge=0)
    lower: float | None = None

    def build(self, max_epochs: int) -> Any:
        import optuna

        if self.type == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials, n_warmup_steps=self.n_warmup_steps)
        if self.type == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=max(1, self.n_warmup_steps), max_resource=max_epochs)
        if self.type == "threshold":
            return optuna.pruners.ThresholdPruner(lower=self.lower)
        return optuna.pruners.NopPruner()


class BudgetSpec(StageParams):
    """Stop after ``trials`` trials in the study (all workers together) and/or ``seconds`` of this worker."""

    trials: int | None = Field(default=12, ge=1)
    seconds: float | None = Field(default=None, gt=0)


class SweepSpec(StageParams):
    """The whole ``sweep.yaml`` (see the module docstring). ``params`` is the base parameter file."""

    params: Path | None = None
    study: str = "sweep"
    objective: str = "adapted.all.mAP_50"
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    enqueue_base: bool = True
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Dim] = Field(min_length=1)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate ``sweep.yaml``; a relative ``params`` is relative to the file's folder."""
    p = Path(path)
    data = read_mapping(p, "sweep", "see `rgb2thermal sweep run --help`")
    if isinstance(data.get("params"), str) and not Path(data["params"]).is_absolute():
        data["params"] = str(p.resolve().parent / data["params"])
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise input_error_from_validation(
            exc, str(p), model=SweepSpec,
            fix="fix the listed keys of the sweep file (see `rgb2thermal sweep run --help`)") from None


def trial_params(base: dict[str, Any], spec: SweepSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The parameter mapping of one trial: base, then ``fixed``, the sweep's own settings, the sampled values."""
    out = copy.deepcopy(base)
    for key, value in {**spec.fixed, **SWEEP_SETS, **values}.items():
        set_dotted(out, key.split("."), value)
    return out


def check_sweep(spec: SweepSpec, base: dict[str, Any], where: str) -> PipelineParams:
    """Every way a sweep can be wrong, before the first trial; returns the base trial's parameters.

    Each searched value (both ends of a range, every choice) is applied alone to the base and
    validated by the pipeline's own parameter models, so "a value the stage rejects" is found
    here with the stage's own message, prefixed with the searched key.
    """
    for key in [*spec.space, *spec.fixed]:
        owned = next((o for o in OWNED_PREFIXES if key == o or key.startswith(o + ".")), None)
        if owned or key in SWEEP_SETS:
            raise InputError(f"the sweep may not set '{key}'", f"{where} space/fixed",
                             f"remove it: {'the sweep sets it itself' if key in SWEEP_SETS else f'{owned} is not searchable'}"
                             f" (not searchable: {list(OWNED_PREFIXES) + list(SWEEP_SETS)})")
    try:
        params = params_from_dict(trial_params(base, spec, {}), f"{where} (base + fixed)")
    except InputError as exc:
        raise InputError(f"the base parameters with the sweep's fixed values are invalid: {exc.what}", exc.where,
                         exc.fix) from None
    if not params.data.has_val:
        raise InputError("a sweep decides, and the base parameters have no val split (it would tune on the test split)",
                         f"{where} params", "set data.val_fraction (e.g. 0.2 of the adapt pairs, which need thermal "
                         "labels) or data.val_split in the base parameters")
    for key, dim in spec.space.items():
        for value in dim.values_to_check():
            try:
                params_from_dict(trial_params(base, spec, {key: value}), where)
            except InputError as exc:
                raise InputError(f"space key '{key}' = {value!r} is rejected: {exc.what}", f"{where} space.{key}",
                                 f"change the range or choices of '{key}' ({exc.fix})") from None
    if spec.objective.count(".") != 2:
        raise InputError(f"objective '{spec.objective}' is not <model>.<category>.<metric>", f"{where} objective",
                         "e.g. adapted.all.mAP_50 or adapted.person.mAP_50 (a metric of the val step)")
    if spec.objective.split(".")[2] not in params.eval.metrics:
        raise InputError(f"objective metric '{spec.objective.split('.')[2]}' is not computed (eval.metrics is "
                         f"{params.eval.metrics})", f"{where} objective", "choose one of eval.metrics")
    return params


def base_mapping(spec: SweepSpec, params_path: str | Path | None) -> tuple[dict[str, Any], Path]:
    """The base parameter mapping (paths rebased) and its file: ``--params`` wins over the sweep's ``params``."""
    path = Path(params_path) if params_path is not None else spec.params
    if path is None:
        raise InputError("no base parameters", "sweep", "give `params:` in the sweep file or --params")
    return read_params_file(path), path
