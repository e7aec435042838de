"""Pipeline parameters: bad values fail before any work, naming the key, the value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.errors import InputError
from core.overrides import apply_overrides
from pipeline.params import load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return {"data": {"synthetic": {"n_pairs": 4}},
            "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco", "epochs": 1}},
            "refine": {"method": "classical"}}


def test_valid_params_map_onto_stage_classes() -> None:
    p = params_from_dict(apply_overrides(_base(), ["pseudo.score_threshold=0.7", "pseudo.thresholds={person: 0.4}",
                                                   "refine.classical_score_threshold=0.5"]))
    pp = p.stage_params("pseudo")
    assert pp.threshold("car") == 0.7 and pp.threshold("person") == 0.4
    assert pp.target_classes == ("person", "car")
    assert p.stage_params("refine").classical_score_threshold == 0.5
    assert p.stage_params("infer", config="cfg.py", checkpoint=None).min_score == 0.05
    assert p.train_fields("student").base_model == "yolox_tiny_8xb8-300e_coco"   # defaults to the teacher's


@pytest.mark.parametrize("override, words", [
    ("pseudo.score_threshold=1.5", ["pseudo.score_threshold", "got 1.5", "allowed: [0, 1]"]),
    ("pseudo.colour=red", ["pseudo.colour", "allowed keys in 'pseudo'", "nms_iou"]),
    ("refine.method=magic", ["refine.method", "'magic'", "should be 'auto', 'sam2', 'classical' or 'none'"]),
    ("refine.classical_score_threshold=-1", ["refine.classical_score_threshold", "got -1", "allowed: [0, 1]"]),
    ("student.train.input_size=[100, 100]", ["student.train.input_size", "multiples of 32"]),
    ("student.train.work_dir=/tmp/x", ["work_dir", "pipeline sets itself"]),
    ("teacher.train.epochs=0", ["teacher.train.epochs", "greater than or equal to 1", "got 0", ">= 1"]),
    ("data.synthetic.n_pairs=1", ["data.synthetic.n_pairs", "got 1", ">= 2"]),
    ("data.synthetic.colour=red", ["data.synthetic.colour", "allowed keys in 'data.synthetic'", "n_pairs"]),
    ("eval.metrics=[mAP, accuracy]", ["accuracy", "mAP_50"]),
    ("infer.batch_size=0", ["infer.batch_size", "got 0", "allowed: >= 1"]),
    ("bogus.key=1", ["bogus"]),
])
def test_bad_parameters_name_key_value_and_fix(override: str, words: list[str]) -> None:
    with pytest.raises(InputError) as ei:
        params_from_dict(apply_overrides(_base(), [override]))
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("override, key, value, allowed", [
    ("infer.min_score=1.2", "infer.min_score", "1.2", "[0, 1]"),
    ("pseudo.nms_iou=0", "pseudo.nms_iou", "0", "(0, 1]"),
    ("pseudo.thresholds={person: 2}", "pseudo.thresholds.person", "2", "[0, 1]"),
    ("warp.min_visible_fraction=1.5", "warp.min_visible_fraction", "1.5", "[0, 1]"),
    ("warp.min_size=-2", "warp.min_size", "-2", ">= 0"),
    ("refine.min_iou=7", "refine.min_iou", "7", "[0, 1]"),
    ("refine.classical_enlarge=9", "refine.classical_enlarge", "9", "[1, 4]"),
])
def test_each_stage_section_names_key_value_and_range(override: str, key: str, value: str, allowed: str) -> None:
    """A bad value in any stage section is ONE InputError: ``section.key``, the value, the allowed range."""
    with pytest.raises(InputError) as ei:
        params_from_dict(apply_overrides(_base(), [override]))
    assert f"{key}: " in ei.value.what and f"got {value}" in ei.value.what, ei.value
    assert f"allowed: {allowed}" in ei.value.what, ei.value
    assert ei.value.where == f"params {key.split('.')[0]}"


def test_all_bad_keys_of_a_section_in_one_error() -> None:
    with pytest.raises(InputError) as ei:
        params_from_dict(apply_overrides(_base(), ["refine.min_iou=2", "refine.on_reject=ignore", "refine.colour=1"]))
    msg = str(ei.value)
    for w in ("refine.min_iou", "refine.on_reject", "'ignore'", "unknown key(s) ['refine.colour']",
              "allowed keys in 'refine'", "classical_enlarge"):
        assert w in msg, (w, msg)
    assert "image_root" not in msg.split("allowed keys")[1]          # pipeline-owned: not offered


def test_unknown_and_pipeline_owned_keys_list_allowed_keys() -> None:
    # the old alias is gone: score_threshold is the one name, default_threshold is unknown
    with pytest.raises(InputError) as ei:
        params_from_dict(apply_overrides(_base(), ["pseudo.default_threshold=0.5"]))
    assert "unknown key(s) ['pseudo.default_threshold']" in str(ei.value)
    assert "'score_threshold'" in ei.value.fix and "target_classes" not in ei.value.fix
    for override, key, offered in (("infer.config=x.py", "infer.config", "min_score"),
                                   ("pseudo.target_classes=[dog]", "pseudo.target_classes", "score_threshold"),
                                   ("refine.image_root=/data", "refine.image_root", "min_iou")):
        with pytest.raises(InputError) as ei:
            params_from_dict(apply_overrides(_base(), [override]))
        assert key in ei.value.what and "set by the pipeline" in ei.value.what, ei.value
        assert offered in ei.value.fix and f"'{key.split('.')[1]}'" not in ei.value.fix, ei.value
    with pytest.raises(InputError) as ei:
        params_from_dict(apply_overrides(_base(), ["warp.colour=1"]))
    assert "registry_dir" in ei.value.fix                            # the user may set warp.registry_dir


def test_step_overrides_are_merged_and_validated(tmp_path: Path) -> None:
    p = params_from_dict(apply_overrides(_base(), ["pseudo.score_threshold=0.6", "pseudo.nms_iou=0.4"]))
    pp = p.stage_params("pseudo", {"score_threshold": 0.8})          # positional: the executor's call
    assert pp.score_threshold == 0.8 and pp.nms_iou == 0.4            # merged over the section
    assert p.stage_params("pseudo").score_threshold == 0.6           # the section itself is unchanged
    assert p.stage_params("pseudo", None).score_threshold == 0.6
    assert p.stage_params("infer", {"min_score": 0.2}, config="cfg.py").min_score == 0.2
    assert p.stage_params("warp", {"min_size": 5}, registry_dir=tmp_path).min_size == 5
    assert p.stage_params("refine", {"min_iou": 0.1}).min_iou == 0.1
    bad = [(lambda: p.stage_params("pseudo", {"score_threshold": 1.7}), "pseudo.score_threshold", "1.7"),
           (lambda: p.stage_params("infer", {"batch_size": 0}, config="cfg.py"), "infer.batch_size", "0"),
           (lambda: p.stage_params("warp", {"min_visible_fraction": -1}, registry_dir=None), "warp.min_visible_fraction", "-1"),
           (lambda: p.stage_params("refine", {"method": "magic"}), "refine.method", "'magic'"),
           (lambda: p.stage_params("pseudo", {"default_threshold": 0.5}), "pseudo.default_threshold", "unknown key"),
           (lambda: p.stage_params("infer", {"checkpoint": "x"}, config="cfg.py"), "infer.checkpoint", "pipeline")]
    for call, key, word in bad:
        with pytest.raises(InputError) as ei:
            call()
        assert key in str(ei.value) and word in str(ei.value), (key, str(ei.value))


def test_warp_registry_default_and_user_value(tmp_path: Path) -> None:
    p = params_from_dict(_base())
    assert p.stage_params("warp", registry_dir=tmp_path).registry_dir == tmp_path
    assert p.stage_params("warp", registry_dir=None).registry_dir is None
    mine = tmp_path / "mine"
    p = params_from_dict({**_base(), "warp": {"registry_dir": str(mine)}})
    assert p.stage_params("warp", registry_dir=tmp_path).registry_dir == mine
    assert p.stage_params("warp", {"registry_dir": str(tmp_path / "o")}, registry_dir=tmp_path).registry_dir == tmp_path / "o"


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
    p = params_from_dict(d)             # validation reads no file system; the run start checks the files
    with pytest.raises(InputError, match="missing.pth does not exist"):
        p.check_files()


def test_overrides_and_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    doc = {"data": {"roots": [{"path": "data", "version": "v1"}]},
           "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}}
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(doc))
    p = load_params(f, ["pseudo.score_threshold=0.25", "student.init_from_teacher=false"])
    assert p.data.roots[0].path == (tmp_path / "data").resolve()     # relative to the YAML's folder
    assert p.stage_params("pseudo").score_threshold == 0.25 and p.student.init_from_teacher is False
    with pytest.raises(InputError, match="KEY=VALUE"):
        load_params(f, ["pseudo.score_threshold"])
    with pytest.raises(InputError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_repository_params_yaml_is_valid() -> None:
    p = load_params(REPO / "params.yaml")
    assert p.data.synthetic is not None and p.teacher.train is not None


def test_thermal_source_infer_section_is_validated_up_front() -> None:
    ok = params_from_dict(apply_overrides(_base(), ["thermal_source.enabled=true", "thermal_source.infer.tta=[flip]"]))
    assert ok.stage_params("infer", ok.thermal_source.infer, config="cfg.py").tta == ["flip"]
    assert ok.stage_params("infer", config="cfg.py").tta == []       # the RGB teacher's inference is unchanged
    for override, key in (("thermal_source.infer.tta=[rotate]", "infer.tta"),
                          ("thermal_source.infer.config=x.py", "infer.config")):
        with pytest.raises(InputError) as ei:
            params_from_dict(apply_overrides(_base(), [override]))
        assert key in str(ei.value), str(ei.value)


def test_shipped_real_data_recipe_is_valid_once_the_user_paths_are_given(tmp_path: Path) -> None:
    """params/real.yaml names placeholders: it validates (no file is read), and without the user's
    paths the run-start check stops naming the keys."""
    with pytest.raises(InputError) as ei:
        load_params(REPO / "params" / "real.yaml").check_files()
    assert "data.roots" in str(ei.value) or "teacher" in str(ei.value)
    ck = tmp_path / "w.pth"
    ck.write_bytes(b"x")
    (tmp_path / "data").mkdir()
    user = [f"teacher.checkpoint={ck}", f"teacher.config={tmp_path / 'c.py'}",
            f"data.roots=[{{path: {tmp_path / 'data'}, version: v}}]"]
    with pytest.raises(InputError, match=r"c\.py does not exist"):      # a missing config: refused at run start
        load_params(REPO / "params" / "real.yaml", user).check_files()
    (tmp_path / "c.py").write_text("# an mmdet config\n")
    p = load_params(REPO / "params" / "real.yaml", user)
    assert p.thermal_source.enabled and p.self_training.rounds >= 1 and "oracle" in p.eval.baselines
    assert p.stage_params("infer", p.thermal_source.infer, config="c.py").input_size == (640, 640)
    # the RGB frames' own labels are the RGB source: no RGB inference step in its plan
    from pipeline.plan import step_names

    assert p.rgb_source.boxes == "labels" and p.stage_params("refine").classes == ["person"]
    assert "infer" not in step_names(p) and "warp" in step_names(p)


def test_shipped_labelled_recipe_is_the_one_measured() -> None:
    """params/real.yaml is the settings benchmarks/msrs_adaptation.py measured as its ``rgblabelstta``
    candidate and, for the labelling loop, ``rgblabelsttarep3``'s (that one + ``label.human_repeat``; all but
    the eval baselines): the students label at 640 + 960 px at the label rule's thresholds, and a labelled frame
    counts three times. Each measured setting set over the file must change nothing: one dropped from it is caught."""
    from benchmarks.msrs_adaptation import CANDIDATES

    tta = [s for s in CANDIDATES["rgblabelstta"][1] if not s.startswith("eval.")]
    sets = [s for s in CANDIDATES["rgblabelsttarep3"][1] if not s.startswith("eval.")]
    assert sorted(sets) == sorted([*tta, "label.human_repeat=3"])       # the loop's lever on the same recipe
    shipped = load_params(REPO / "params" / "real.yaml")
    measured = load_params(REPO / "params" / "real.yaml", sets)
    assert shipped.model_dump(mode="json") == measured.model_dump(mode="json")
    assert shipped.label.human_repeat == 3 and not shipped.label.override    # acts once frames are imported
    assert shipped.self_training.rounds == 3
    assert shipped.self_training.round_pseudo(shipped.thermal_source.pseudo)["thresholds"] == {"person": 0.2, "car": 0.6}
    assert shipped.self_training.round_infer(shipped.thermal_source.infer) == {"input_size": [640, 640],
                                                                              "tta_sizes": [[960, 960]]}


def test_shipped_unlabelled_recipe_is_the_one_measured() -> None:
    """params/real_unlabelled.yaml is params/real.yaml with the settings benchmarks/msrs_adaptation.py
    measured as its ``rgbpredtta`` candidate and, for the labelling loop, ``rgbpredttarep3``'s (that one +
    ``label.human_repeat``; all but the eval baselines): a change to either file without the other would
    ship numbers nobody measured."""
    from benchmarks.msrs_adaptation import CANDIDATES
    from pipeline.plan import step_names

    tta = [s for s in CANDIDATES["rgbpredtta"][1] if not s.startswith("eval.")]
    sets = [s for s in CANDIDATES["rgbpredttarep3"][1] if not s.startswith("eval.")]
    assert sorted(sets) == sorted([*tta, "label.human_repeat=3"])       # the loop's lever on the same recipe
    measured = load_params(REPO / "params" / "real.yaml", sets)
    shipped = load_params(REPO / "params" / "real_unlabelled.yaml")
    assert shipped.model_dump(mode="json") == measured.model_dump(mode="json")
    assert shipped.rgb_source.boxes == "predictions" and "infer" in step_names(shipped)
    assert shipped.stage_params("pseudo").thresholds == {"person": 0.5, "car": 0.4}
    assert shipped.self_training.round_pseudo(shipped.thermal_source.pseudo)["thresholds"] == {"person": 0.2, "car": 0.35}
    assert shipped.self_training.round_infer(shipped.thermal_source.infer) == {"input_size": [640, 640],
                                                                              "tta_sizes": [[960, 960]]}
    assert shipped.label.human_repeat == 3 and not shipped.label.override    # acts once frames are imported


def test_no_path_enters_a_key_section(tmp_path: Path) -> None:
    """The parameter part of a stage key names no file or folder: those are keyed by content."""
    def params(where: Path):
        (where / "data").mkdir(parents=True)
        return params_from_dict({"data": {"roots": [{"path": str(where / "data"), "version": "v1"}], "classes": ["car"]},
                                 "teacher": {"config": str(where / "c.py"), "checkpoint": str(where / "w.pth")},
                                 "warp": {"registry_dir": str(where / "reg")}, "refine": {"method": "classical"}})

    a, b = params(tmp_path / "a"), params(tmp_path / "b")
    for name in ("data", "teacher", "warp", "refine", "student", "pseudo"):
        assert a.section(name) == b.section(name), name
        assert str(tmp_path) not in yaml.safe_dump(a.section(name)), name
    assert a.section("data")["roots"] == [{"version": "v1"}] and a.section("data")["classes"] == ["car"]


def test_file_checks_run_once_at_run_start_before_any_work(tmp_path: Path) -> None:
    """Validation reads no file system (a recipe validates anywhere); a run stops before it writes anything."""
    from pipeline.executor import run_pipeline

    p = params_from_dict({"data": {"roots": [{"path": str(tmp_path / "gone"), "version": "v1"}]},
                          "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}})
    with pytest.raises(InputError, match="dataset folder .*gone does not exist"):
        run_pipeline(p, tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


def test_dumped_parameters_validate_again_with_the_same_plan_and_keys() -> None:
    """The run record and the demo write ``model_dump``: read back, it must plan and key the same steps."""
    from pipeline.plan import plan

    d = {**_base(), "student": {"train": {"epochs": 2}},
         "thermal_source": {"enabled": True, "pseudo": {"thresholds": {"person": 0.2}}},
         "self_training": {"rounds": 2, "pseudo": {"score_threshold": 0.3}}}
    p = params_from_dict(d)
    dump = p.model_dump(mode="json")
    assert "work_dir" not in dump["student"]["train"] and dump["self_training"]["pseudo"] == {"score_threshold": 0.3}
    again = params_from_dict(dump)
    assert [(s.name, s.sections, dict(s.options)) for s in plan(again)] == \
           [(s.name, s.sections, dict(s.options)) for s in plan(p)]
    for name in ("data", "teacher", "student", "pseudo", "thermal_source", "self_training.pseudo"):
        assert again.section(name) == p.section(name), name
