"""A pipeline training step's decisions before any training: empty labels, and when initial weights are looked up."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import atomic
from core.errors import InputError
from detection.train_spec import TrainFields
from tasks.train_spec_build import StepTraining, run_training_step


def _empty_labels(tmp_path: Path) -> Path:
    return atomic.write_json(tmp_path / "labels.json", {"images": [{"id": 1, "file_name": "a.png", "width": 32,
                                                                    "height": 32}],
                                                        "annotations": [], "categories": [{"id": 1, "name": "person"}]})


def _init_never_called() -> str:
    raise AssertionError("the initial weights must not be looked up when there is nothing to train")


def test_an_optional_step_without_labels_is_not_trained_and_says_why(tmp_path: Path) -> None:
    run = run_training_step(TrainFields(base_model="yolox_tiny_8xb8-300e_coco"), name="oracle",
                            labels=_empty_labels(tmp_path), classes=["person"], image_root=tmp_path, out=tmp_path,
                            optional=True, init=_init_never_called)
    assert run == StepTraining(None, "'oracle' not trained: its labels (labels.json) are empty (e.g. no thermal "
                                     "labels on the adapt split)")
    assert not (tmp_path / "train").exists()


def test_a_required_step_without_labels_is_refused_before_its_init_is_looked_up(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no labels survived to train 'student' on"):
        run_training_step(TrainFields(base_model="yolox_tiny_8xb8-300e_coco"), name="student",
                          labels=_empty_labels(tmp_path), classes=["person"], image_root=tmp_path, out=tmp_path,
                          init=_init_never_called)
