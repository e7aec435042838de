"""The typed training spec: everything a training run depends on, validated at the boundary.

Why: users used to hand-edit ``yolox_s.py`` and lost track of which config produced which
number. A run is now described by this small spec (YAML or flags); ``detection.train_config``
turns it into a fully resolved mmdet config written next to the run's results.

Units: ``input_size`` is ``(width, height)`` in pixels (multiples of 32); ``lr`` is the
optimizer's base learning rate; epochs count passes over the training images.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import input_error_from_validation
from data.index import DEFAULT_CLASSES

#: which YOLOX head losses can be overridden, and the mmdet loss types that fit each slot
#: (YOLOX passes soft IoU-aware class targets and (N, 1) objectness targets, and xyxy boxes).
LOSS_SLOTS: dict[str, tuple[str, ...]] = {
    "loss_cls": ("CrossEntropyLoss", "FocalLoss", "QualityFocalLoss", "VarifocalLoss"),
    "loss_obj": ("CrossEntropyLoss", "FocalLoss", "QualityFocalLoss", "VarifocalLoss"),
    "loss_bbox": ("IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SIoULoss"),
    "loss_l1": ("L1Loss", "SmoothL1Loss", "BalancedL1Loss"),
}

#: SGD base lr at batch 64 (YOLOX's linear scaling rule: lr = 0.01 x batch / 64); AdamW likewise.
BASE_LR_AT_64 = {"sgd": 0.01, "adamw": 0.004}


class DatasetSpec(BaseModel):
    """A COCO dataset: annotation JSON + the folder its ``file_name`` entries are relative to."""

    model_config = ConfigDict(extra="forbid")
    ann_file: Path
    img_root: Path

    @field_validator("ann_file")
    @classmethod
    def _ann_exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"annotation file {v} does not exist")
        return v.resolve()

    @field_validator("img_root")
    @classmethod
    def _root_exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"image folder {v} does not exist")
        return v.resolve()


class LossSpec(BaseModel):
    """One loss override: an mmdet loss ``type`` plus its keyword arguments (e.g. ``gamma``, ``alpha``).

    ``loss_weight`` defaults to YOLOX's weight for the slot; ``reduction`` is forced to ``sum``
    (YOLOX normalises by the number of positives itself).
    """

    model_config = ConfigDict(extra="allow")
    type: str


class TrainSpec(BaseModel):
    """A training run. Only ``base_model``, ``classes``, ``train`` and ``work_dir`` are required."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="mmdet bundled config name (yolox_tiny_8xb8-300e_coco, "
                                        "yolox_s_8xb8-300e_coco) or a path to an mmdet .py config")
    classes: list[str] = Field(default_factory=lambda: list(DEFAULT_CLASSES), min_length=1)
    train: DatasetSpec
    val: DatasetSpec | None = Field(default=None, description="validation set; best checkpoint by its "
                                                              "coco/bbox_mAP_50 (without it: the training set, with a warning)")
    test: DatasetSpec | None = Field(default=None, description="after training, predict on it with the best model "
                                                               "and write COCO results + an eval table")
    work_dir: Path
    input_size: tuple[int, int] = (416, 416)
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=8, ge=1, description="images per step of each training process (gpus x nnodes)")
    lr: float | None = Field(default=None, gt=0, description="default: linear scaling rule (SGD 0.01 x total batch/64)")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(default=1.0, ge=0)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)
    grad_clip: float | None = Field(default=10.0, gt=0)
    losses: dict[str, LossSpec] = Field(default_factory=dict)
    augment: list[Literal["flip", "affine", "hsv"]] = Field(default_factory=lambda: ["flip", "affine"])
    erase_ignored: bool = Field(default=False, description=(
        "fill ignore regions (COCO iscrowd boxes, e.g. uncertain pseudo-labels) with the pad grey before "
        "augmentation, so they are taught neither as objects nor as background (YOLOX has no ignore loss)"))
    load_from: Path | None = None
    head_init: Literal["transfer", "reinit"] = Field(default="transfer", description=(
        "with load_from of other classes: carry the mapped classifier rows (transfer) or re-initialise the head"))
    class_map: dict[str, list[str]] | None = Field(default=None, description=(
        "target class -> checkpoint class name(s) for head transfer; default: same names"))
    freeze_bn: bool = Field(default=False, description="keep BatchNorm in eval mode (frozen statistics)")
    frozen_stages: int = Field(default=-1, ge=-1, description="backbone stages to freeze (0 = stem only)")
    ema: bool = True
    seed: int = 0
    deterministic: bool = Field(default=False, description=(
        "CPU only (dropped with a warning on CUDA): mmengine randomness.deterministic, i.e. "
        "torch.use_deterministic_algorithms, so a seed gives the same weights run after run; the demo sets it"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool | None = Field(default=None, description="mixed precision (mmengine AmpOptimWrapper); default on "
                                                       "for CUDA, off on CPU")
    gpus: int = Field(default=1, ge=1, le=64, description=(
        "training processes per node (torchrun --nproc_per_node): one per GPU on CUDA; on CPU, CPU processes "
        "(gloo backend). Above 1 (or nnodes above 1) training runs under torchrun with mmengine's "
        "launcher='pytorch' (DDP); batch_size is per process, the linear lr rule uses the total batch"))
    nnodes: int = Field(default=1, ge=1, le=1024, description=(
        "machines training together (torchrun --nnodes); this one is node 0, the others run the torchrun "
        "command it logs (workspace and datasets on a filesystem mounted at the same path on every node)"))
    master_addr: str | None = Field(default=None, min_length=1, description=(
        "with nnodes > 1: the address of this machine (node 0) the other nodes reach (torchrun --master_addr)"))
    master_port: int | None = Field(default=None, ge=1, le=65535, description=(
        "with nnodes > 1: the rendezvous port on node 0 (default 29500); on one node a free port is picked"))
    early_stop_patience: int | None = Field(default=None, ge=1, description="stop after this many validations "
                                                                             "without a better coco/bbox_mAP_50")
    early_stop_min_delta: float = Field(default=0.001, ge=0, description=(
        "smallest coco/bbox_mAP_50 gain that counts as better (mmengine's default 0.1 is far too coarse for mAP)"))
    val_interval: int = Field(default=1, ge=1)
    num_workers: int = Field(default=2, ge=0)
    resume: bool = Field(default=False, description="continue from work_dir's last checkpoint")
    progress: bool = True

    @field_validator("input_size")
    @classmethod
    def _size32(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(s < 32 or s % 32 for s in v):
            raise ValueError(f"input_size {v} must be (width, height) multiples of 32, at least 32")
        return v

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"classes {v} contain duplicates")
        return v

    @field_validator("losses")
    @classmethod
    def _slots(cls, v: dict[str, LossSpec]) -> dict[str, LossSpec]:
        for slot, loss in v.items():
            if slot not in LOSS_SLOTS:
                raise ValueError(f"unknown loss slot '{slot}'; YOLOX has {sorted(LOSS_SLOTS)}")
            if loss.type not in LOSS_SLOTS[slot]:
                raise ValueError(f"{slot}: loss type '{loss.type}' does not fit this slot; "
                                 f"use one of {list(LOSS_SLOTS[slot])}")
        return v

    @field_validator("load_from")
    @classmethod
    def _ckpt(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"load_from checkpoint {v} does not exist")
        return v.resolve() if v is not None else None

    @model_validator(mode="after")
    def _cross(self) -> TrainSpec:
        if self.class_map is not None:
            unknown = sorted(set(self.class_map) - set(self.classes))
            if unknown:
                raise ValueError(f"class_map names {unknown}, which are not target classes {self.classes}")
        if self.nnodes > 1 and self.master_addr is None:
            raise ValueError(f"nnodes={self.nnodes} needs master_addr: the address of this machine (node 0) "
                             "that the other nodes reach")
        return self

    @property
    def world_size(self) -> int:
        """Training processes in all: ``gpus x nnodes`` (1: the in-process path, no torchrun)."""
        return self.gpus * self.nnodes

    @property
    def effective_lr(self) -> float:
        """The lr actually used: ``lr`` or the linear scaling rule ``base x total batch / 64``, the total
        batch being ``batch_size x world_size`` (each process trains on ``batch_size`` images per step)."""
        if self.lr is not None:
            return self.lr
        return BASE_LR_AT_64[self.optimizer] * self.batch_size * self.world_size / 64


#: where the training processes meet (not what they train): never part of a key or a spec identity
RENDEZVOUS_FIELDS = ("master_addr", "master_port")
#: process-count fields: part of a key only when not 1, so single-process workspaces keep their keys
PROCESS_FIELDS = ("gpus", "nnodes")


def training_identity(values: dict[str, Any]) -> dict[str, Any]:
    """A dumped TrainSpec/TrainFields without what does not change the trained model's identity.

    Why: a step key (``pipeline.params.PipelineParams.section``) and a checkpoint's ``spec_sha256``
    must change when the model would, and only then. The rendezvous address and port
    (:data:`RENDEZVOUS_FIELDS`) are where the processes meet; the process counts
    (:data:`PROCESS_FIELDS`) change the model (per-process batches, the lr rule) but are left out at
    their default 1, so workspaces trained before these fields existed keep their keys.

    Args:
        values: a ``model_dump`` of a TrainSpec or TrainFields (not modified).

    Returns:
        A copy without those keys.
    """
    return {k: v for k, v in values.items()
            if k not in RENDEZVOUS_FIELDS and not (k in PROCESS_FIELDS and v == 1)}


#: TrainSpec fields a pipeline sets itself (datasets, output folder, classes, initial weights).
PIPELINE_OWNED = ("train", "val", "test", "work_dir", "classes", "load_from", "resume")


class TrainFields(TrainSpec):
    """A training section of pipeline parameters: TrainSpec without what the pipeline sets itself
    (:data:`PIPELINE_OWNED`), validated by TrainSpec's own validators before any dataset exists.
    ``base_model`` may be left out where the pipeline has a default (a student: the teacher's)."""

    base_model: str | None = None  # type: ignore[assignment]
    erase_ignored: bool | None = Field(default=None, description=(  # type: ignore[assignment]
        "None: on exactly when the training labels hold ignore regions (uncertain pseudo-labels)"))
    # the pipeline-owned fields: refused when set (below), left out of dumps, so that a dumped
    # parameter document (the run record, the demo's params) validates again
    classes: list[str] = Field(default_factory=lambda: list(DEFAULT_CLASSES), exclude=True)
    train: DatasetSpec | None = Field(default=None, exclude=True)  # type: ignore[assignment]
    val: DatasetSpec | None = Field(default=None, exclude=True)
    test: DatasetSpec | None = Field(default=None, exclude=True)
    work_dir: Path | None = Field(default=None, exclude=True)  # type: ignore[assignment]
    load_from: Path | None = Field(default=None, exclude=True)
    resume: bool = Field(default=False, exclude=True)

    @model_validator(mode="after")
    def _not_owned(self) -> TrainFields:
        owned = sorted(self.model_fields_set & set(PIPELINE_OWNED))
        if owned:
            allowed = sorted(set(TrainSpec.model_fields) - set(PIPELINE_OWNED))
            raise ValueError(f"sets {owned}, which the pipeline sets itself: remove them; allowed: {allowed}")
        return self


def spec_from_dict(data: dict[str, Any], where: str = "train spec") -> TrainSpec:
    """Validate a plain dict (from YAML or flags) into a ``TrainSpec``; errors become ``InputError``."""
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as exc:
        raise input_error_from_validation(exc, where, model=TrainSpec,
                                          fix="fix the listed fields (see `rgb2thermal train --help`)") from None


def load_spec(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> TrainSpec:
    """Read a YAML spec; relative paths in it are relative to the YAML file's folder."""
    from core.yamlio import read_mapping

    p = Path(path)
    data = read_mapping(p, "spec", "see `rgb2thermal train --help`")
    data = _rebase(data, p.parent)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return spec_from_dict(data, str(p))


def _rebase(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(v: Any) -> Any:
        return str(base / v) if isinstance(v, str) and not Path(v).is_absolute() else v

    out = dict(data)
    for key in ("work_dir", "load_from"):
        if key in out and out[key] is not None:
            out[key] = fix(out[key])
    for key in ("train", "val", "test"):
        if isinstance(out.get(key), dict):
            out[key] = {k: fix(v) if k in ("ann_file", "img_root") else v for k, v in out[key].items()}
    if isinstance(out.get("base_model"), str) and out["base_model"].endswith(".py"):
        out["base_model"] = fix(out["base_model"])
    return out
