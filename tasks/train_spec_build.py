"""The :class:`detection.train_spec.TrainSpec` of a pipeline training step, from typed values.

Why a function and not a dict assembled in the pipeline: which labels a detector trains on
(pseudo-labels, + the RGB frames' ground truth when mixing), where their images are, how ignore
regions are treated and which weights it starts from are training decisions; the pipeline only
names the files. Label files are COCO ``xywh`` pixels; their ``file_name``s are relative to
``image_root``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import atomic
from core.errors import InputError
from detection.train_spec import TrainFields, TrainSpec, spec_from_dict

if TYPE_CHECKING:
    from tasks.train import TrainResult


def training_labels(labels: Path, name: str, *, optional: bool, rgb_labels: Path | None,
                    out: Path) -> tuple[Path | None, bool]:
    """The label file a training step trains on, and whether it holds ignore regions (``iscrowd``).

    Args:
        labels: the step's (pseudo-)labels, COCO.
        name: the step's name, for messages.
        optional: an empty label set means "nothing to train" (returns ``(None, False)``) instead
            of an error (the oracle without thermal labels).
        rgb_labels: with mixed training, the RGB frames with their ground truth, appended to the
            labels in ``out/train_labels.json`` (tagged ``thermal``/``rgb``).
        out: the step's folder.

    Raises:
        InputError: ``labels`` has no box and the step is not optional.
    """
    anns = atomic.read_json(labels)["annotations"]
    if not anns and optional:
        return None, False
    if not anns:
        raise InputError(f"no labels survived to train '{name}' on (0 boxes)", str(labels),
                         "lower pseudo.score_threshold, check the teacher (train it longer), or look at the "
                         "infer/pseudo/warp reports' dropped counts")
    ignored = any(a.get("iscrowd") for a in anns)
    if rgb_labels is not None:
        from core.coco import concat_datasets

        labels = atomic.write_json(out / "train_labels.json", concat_datasets(
            [atomic.read_json(labels), atomic.read_json(rgb_labels)], tags=["thermal", "rgb"]), indent=None)
    return labels, ignored


def build_train_spec(fields: TrainFields, *, classes: Sequence[str], labels: Path, image_root: Path, work_dir: Path,
                     val_labels: Path | None = None, init: str | None = None, resume: bool = False,
                     has_ignored: bool = False, where: str = "train spec") -> TrainSpec:
    """A full TrainSpec: the user's training ``fields`` + the files and weights the pipeline chose.

    Args:
        fields: the user's training section (no datasets, work dir, classes or initial weights).
        classes: the target class names (``data.classes``).
        labels: the COCO training labels.
        val_labels: validation labels (the best checkpoint is chosen by them), or ``None``.
        image_root: the folder their relative ``file_name``s are relative to.
        work_dir: where training writes.
        init: initial weights (a checkpoint path), else the base model's.
        resume: continue an interrupted attempt in ``work_dir``.
        has_ignored: the labels hold ignore regions; unless the user set ``erase_ignored`` (True or
            False), they are erased from the images (uncertain pseudo-labels must not train as background).
        where: names the section in error messages.
    """
    values = fields.model_dump(exclude_unset=True)
    if values.get("erase_ignored") is None:       # unset or None: uncertain pseudo-labels are not background
        values["erase_ignored"] = has_ignored
    data = {"train": {"ann_file": str(labels), "img_root": str(image_root)}}
    if val_labels is not None:
        data["val"] = {"ann_file": str(val_labels), "img_root": str(image_root)}
    return spec_from_dict({**values, "classes": list(classes), **data, "work_dir": str(work_dir), "resume": resume,
                           **({"load_from": init} if init else {})}, where)


@dataclass(frozen=True)
class StepTraining:
    """A pipeline training step's outcome: the run (with its slim checkpoint), or ``None`` and why
    nothing was trained (an optional step whose labels are empty)."""

    result: TrainResult | None
    note: str = ""


def run_training_step(fields: TrainFields, *, name: str, labels: Path, classes: Sequence[str], image_root: Path,
                      out: Path, resume: bool = False, optional: bool = False, rgb_labels: Path | None = None,
                      val_labels: Path | None = None, init: Callable[[], str | None] | None = None) -> StepTraining:
    """Train a pipeline step's detector: its labels (:func:`training_labels`), its spec
    (:func:`build_train_spec`, work dir ``out/train``), :func:`tasks.train.train`.

    Args:
        fields: the user's training section (:func:`build_train_spec`).
        name: the step's name, for messages.
        labels: the step's (pseudo-)labels, COCO ``xywh`` pixels.
        classes: the target class names (``data.classes``).
        image_root: the folder the labels' relative ``file_name``s are relative to.
        out: the step's folder (training writes under ``out/train``).
        resume: continue an interrupted attempt.
        optional: empty labels mean "nothing to train" instead of an error (:func:`training_labels`).
        rgb_labels: with mixed training, the RGB frames with their ground truth.
        val_labels: validation labels (best checkpoint by them), or ``None``.
        init: gives the initial weights' checkpoint path; called only when there is something to
            train (an empty label set is the error to report, not a missing upstream model).

    Returns:
        :class:`StepTraining`; ``result.slim_checkpoint`` is set whenever ``result`` is.

    Raises:
        InputError: the labels are empty and the step is not optional.
        RuntimeError: training ended without a checkpoint.
    """
    from tasks.train import train

    train_labels, ignored = training_labels(labels, name, optional=optional, rgb_labels=rgb_labels, out=out)
    if train_labels is None:
        return StepTraining(None, f"'{name}' not trained: its labels ({labels.name}) are empty (e.g. no "
                                  "thermal labels on the adapt split)")
    spec = build_train_spec(fields, classes=classes, labels=train_labels, image_root=image_root,
                            work_dir=out / "train", resume=resume, has_ignored=ignored, val_labels=val_labels,
                            init=init() if init else None, where=f"params ({name})")
    result = train(spec)
    if result.slim_checkpoint is None:
        raise RuntimeError(f"{name} training produced no checkpoint (see {result.run_dir})")
    return StepTraining(result)
