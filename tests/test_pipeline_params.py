"""Pipeline parameters: bad values fail before any work, naming the key, the value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.errors import InputError
from tasks.pipeline_params import apply_overrides, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return {"data": {"synthetic": {"n_pairs": 4}},
            "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco", "epochs": 1}},
            "refine": {"method": "classical"}}


def test_valid_params_map_onto_stage_classes() -> None:
    p = params_from_dict(apply_overrides(_base(), ["pseudo.score_threshold=0.7", "pseudo.thresholds={person: 0.4}",
                                                   "refine.classical_score_threshold=0.5"]))
    pp = p.pseudo_params()
    assert pp.threshold("car") == 0.7 and pp.threshold("person") == 0.4
    assert pp.target_classes == ("person", "car")
    assert p.refine_params().classical_score_threshold == 0.5
    assert p.infer_params("cfg.py", None).min_score == 0.05
    assert p.student_train_fields()["base_model"] == "yolox_tiny_8xb8-300e_coco"   # defaults to the teacher's


@pytest.mark.parametrize("override, words", [
    ("pseudo.score_threshold=1.5", ["pseudo", "1.5", "[0, 1]"]),
    ("pseudo.colour=red", ["pseudo.colour", "allowed keys", "nms_iou"]),
    ("refine.method=magic", ["refine", "magic", "auto, sam2 or classical"]),
    ("refine.classical_score_threshold=-1", ["classical_score_threshold", "-1", "between 0 and 1"]),
    ("student.train.input_size=[100, 100]", ["student.train.input_size", "multiples of 32"]),
    ("student.train.work_dir=/tmp/x", ["work_dir", "pipeline sets itself"]),
    ("teacher.train.epochs=0", ["teacher.train.epochs", "greater than or equal to 1", "0"]),
    ("data.synthetic.n_pairs=1", ["data.synthetic.n_pairs", "1"]),
    ("eval.metrics=[mAP, accuracy]", ["accuracy", "mAP_50"]),
    ("infer.batch_size=0", ["batch_size", "0"]),
    ("bogus.key=1", ["bogus"]),
])
def test_bad_parameters_name_key_value_and_fix(override: str, words: list[str]) -> None:
    with pytest.raises(InputError) as ei:
        params_from_dict(apply_overrides(_base(), [override]))
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)


def test_exactly_one_data_source_and_teacher_mode(tmp_path: Path) -> None:
    d = _base()
    d["data"]["roots"] = [{"path": str(tmp_path), "version": "v1"}]
    with pytest.raises(InputError, match="exactly one of data.roots"):
        params_from_dict(d)
    d = _base()
    d["teacher"]["config"] = "yolox_tiny_8xb8-300e_coco"
    with pytest.raises(InputError, match="exactly one of teacher.config"):
        params_from_dict(d)
    d = _base()
    d["teacher"] = {"config": "x.py", "checkpoint": str(tmp_path / "missing.pth")}
    with pytest.raises(InputError, match="missing.pth does not exist"):
        params_from_dict(d)


def test_overrides_and_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    doc = {"data": {"roots": [{"path": "data", "version": "v1"}]},
           "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}}
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(doc))
    p = load_params(f, ["pseudo.score_threshold=0.25", "student.init_from_teacher=false"])
    assert p.data.roots[0].path == (tmp_path / "data").resolve()     # relative to the YAML's folder
    assert p.pseudo_params().default_threshold == 0.25 and p.student.init_from_teacher is False
    with pytest.raises(InputError, match="KEY=VALUE"):
        load_params(f, ["pseudo.score_threshold"])
    with pytest.raises(InputError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_repository_params_yaml_is_valid() -> None:
    p = load_params(REPO / "params.yaml")
    assert p.data.synthetic is not None and p.teacher.train is not None
