"""The plain pipeline end to end on tiny generated data: whole-stage reuse, per-image caches,
resume after a kill, run records, the workspace lock, the single-step (DVC) door and the CLI.

Real components throughout (mmdet YOLOX-nano teacher from ../shared/models, classical refiner,
real YOLOX training for the students, pycocotools). Images are 160x128 (RGB) / 128x96 (thermal),
students train one epoch at 128x128 with one torch thread.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InputError

pytest.importorskip("mmdet")

NANO = Path(__file__).resolve().parents[2] / "shared" / "models" / "yolox-nano-coco"
needs_nano = pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(),
                                reason=f"shared YOLOX-nano teacher absent at {NANO}")
SIZES = {"rgb_size": (160, 128), "thermal_size": (128, 96)}
TRAIN = {"device": "cpu", "input_size": [128, 128], "batch_size": 4, "epochs": 1, "num_workers": 0,
         "progress": False, "ema": False, "warmup_epochs": 0, "seed": 0}


# The first run's test-split mAP@0.5 per model and class. Deterministic: generated frames (seed 11),
# the fixed nano teacher, students trained with seed 0 on one torch thread (same numbers in two runs
# on one machine, 2026-12-06). Across machines, other CPUs may round differently, but these values
# are steps of COCO's 101-point precision curve over a handful of boxes (25.5/101, 51/101): only a
# changed ranking or a box crossing IoU 0.5 moves them, not a rounding difference. The RGB teacher
# finds nothing on the 128x96 thermal frames (source-only 0); refining changed no student box here
# (no_refinement equals adapted on these 10 frames).
FIRST_RUN_MAP_50 = {
    "adapted": {"person": 25.5 / 101, "car": 51 / 101, "all": 38.25 / 101},
    "source_only": {"person": 0.0, "car": 0.0, "all": 0.0},
    "no_refinement": {"person": 25.5 / 101, "car": 51 / 101, "all": 38.25 / 101},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")     # tiny models: 2 threads thrash on 2 cores


def _folder(root: Path, n: int, start: int = 0) -> None:
    """A paired folder (generic layout) + its registry entry; ``start`` > 0 adds frames."""
    from data.synthetic import generate
    from registration.registry import HomographyEntry, save_entry

    info = generate(root / "data", n, seed=11, start_index=start, progress=False, **SIZES)
    save_entry(root / "registry", "syn", HomographyEntry(H=info.homography, rgb_size=info.rgb_size,
                                                         thermal_size=info.thermal_size, method="synthetic_known",
                                                         error_px=0.0))


def _params(root: Path, **sets: object) -> dict:
    d = {"data": {"roots": [{"path": str(root / "data"), "version": "syn"}]},
         "teacher": {"config": str(NANO / "yolox_nano_coco.py"), "checkpoint": str(NANO / "yolox_nano_coco.pth")},
         "infer": {"device": "cpu", "min_score": 0.01, "max_per_image": 20},
         "pseudo": {"score_threshold": 0.02, "vehicles_as_car": True, "max_per_image": 5, "histogram": False},
         "warp": {"registry_dir": str(root / "registry")},
         "refine": {"method": "classical", "classical_score_threshold": 0.3},
         # the nano checkpoint has folded BatchNorm: fine-tune with frozen BN and a frozen stem
         "student": {"train": {**TRAIN, "freeze_bn": True, "frozen_stages": 0}}}
    for k, v in sets.items():
        sec, key = k.split("__")
        d[sec][key] = v
    return d


def _run(root: Path, **sets: object):
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    return run_pipeline(params_from_dict(_params(root, **sets)), root / "ws")


def _stages(record) -> dict:
    return {s.name: s for s in record.stages}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """first run -> unchanged re-run -> refine threshold changed -> images added -> refine 'killed'."""
    from data.index import load_index
    from core import atomic

    root = tmp_path_factory.mktemp("pipe")
    _folder(root, 10)
    runs = {"first": _run(root)}
    runs["first_refine_counts"] = atomic.read_json(root / "ws" / "stages" / "refine" / "refined.json.report.json")["counts"]
    idx_first = load_index(root / "ws" / "stages" / "index" / "versions" / "syn.json")
    runs["again"] = _run(root)
    runs["threshold"] = _run(root, refine__classical_score_threshold=0.95)
    _folder(root, 4, start=10)
    runs["added"] = _run(root, refine__classical_score_threshold=0.95)
    idx_added = load_index(root / "ws" / "stages" / "index" / "versions" / "syn.json")
    (root / "ws" / "stages" / "refine" / "stage.json").unlink()      # as if killed during refine
    runs["resumed"] = _run(root, refine__classical_score_threshold=0.95)
    return root, runs, idx_first, idx_added


@needs_nano
def test_first_run_produces_every_output_and_a_record(scenario) -> None:
    from pipeline.runs import load_record

    root, runs, _, _ = scenario
    rec = runs["first"]
    assert rec.status == "succeeded" and [s.name for s in rec.stages] == [
        "data", "index", "teacher", "infer", "pseudo", "warp", "refine", "student", "baseline", "quality", "eval"]
    assert not any(s.reused for s in rec.stages)
    saved = load_record(root / "ws", rec.run_id)
    assert saved.status == "succeeded" and saved.datasets["syn"].startswith("sha256:")
    assert set(saved.models) == {"teacher", "student", "baseline"}
    got = {run: {c: saved.metrics["eval"][run][c]["mAP_50"] for c in ("person", "car", "all")}
           for run in ("adapted", "source_only", "no_refinement")}
    assert got == {run: {c: pytest.approx(v, abs=1e-9) for c, v in per.items()} for run, per in FIRST_RUN_MAP_50.items()}
    assert got["adapted"]["all"] - got["source_only"]["all"] > 0.3       # adaptation beats the RGB teacher
    assert set(saved.metrics) == {"eval"}          # metrics are kept per step
    assert "| person |" in saved.metrics["eval"]["table_markdown"]
    assert runs["first_refine_counts"]["replace"] > 0    # so the threshold change below changes labels
    assert (root / "ws" / "stages" / "eval" / "metrics.json").is_file()
    assert (root / "ws" / "stages" / "quality" / "quality" / "quality.md").is_file()


@needs_nano
def test_unchanged_rerun_reuses_every_stage(scenario) -> None:
    _, runs, _, _ = scenario
    st = _stages(runs["again"])
    assert all(s.reused for s in st.values())
    assert runs["again"].metrics["eval"]["adapted"] == runs["first"].metrics["eval"]["adapted"]


@needs_nano
def test_refine_threshold_change_reruns_only_refine_and_downstream(scenario) -> None:
    _, runs, _, _ = scenario
    st = _stages(runs["threshold"])
    for name in ("data", "index", "teacher", "infer", "pseudo", "warp", "baseline"):
        assert st[name].reused, name
    for name in ("refine", "student", "quality", "eval"):
        assert not st[name].reused, name
    first_refine = _stages(runs["first"])["refine"]
    assert st["refine"].cache_misses == 0 and st["refine"].cache_hits == first_refine.cache_misses > 0


@needs_nano
def test_added_images_are_the_only_ones_inferred_and_refined(scenario) -> None:
    _, runs, idx_first, idx_added = scenario
    old_adapt = {p.pair_id for p in idx_first.select(split="adapt")}
    new_adapt = {p.pair_id for p in idx_added.select(split="adapt")} - old_adapt
    assert new_adapt, "the added frames should include adapt-split pairs"
    st = _stages(runs["added"])
    assert not st["infer"].reused
    assert st["infer"].cache_hits == len(old_adapt) and st["infer"].cache_misses == len(new_adapt)
    first_refined = _stages(runs["first"])["refine"].cache_misses
    assert st["refine"].cache_hits == first_refined and st["refine"].cache_misses <= len(new_adapt)
    assert not st["student"].reused and not st["eval"].reused
    assert st["teacher"].reused          # the user's teacher is keyed on its own files, not on the data


@needs_nano
def test_killed_step_is_redone_and_identical_output_keeps_downstream(scenario) -> None:
    _, runs, _, _ = scenario
    st = _stages(runs["resumed"])
    assert not st["refine"].reused and st["refine"].cache_misses == 0
    # refine rewrote byte-identical labels, so the student (keyed on their content) is reused
    assert st["student"].reused and st["eval"].reused


@needs_nano
def test_runs_cli_list_show_compare(scenario, capsys) -> None:
    from rgb2thermal_cli.main import main

    root, runs, _, _ = scenario
    ws = str(root / "ws")
    assert main(["runs", "--workspace", ws, "list"]) == 0
    out = capsys.readouterr().out
    assert all(r.run_id in out for k, r in runs.items() if k != "first_refine_counts")
    assert main(["runs", "--workspace", ws, "show", runs["threshold"].run_id]) == 0
    assert "| refine |" in capsys.readouterr().out
    assert main(["runs", "--workspace", ws, "compare", runs["first"].run_id, runs["threshold"].run_id]) == 0
    out = capsys.readouterr().out
    assert "refine.classical_score_threshold" in out and "| car |" in out
    assert main(["runs", "--workspace", ws, "show", "no-such-run"]) == 2


def test_bad_override_fails_before_any_work(tmp_path: Path, capsys) -> None:
    import yaml

    from rgb2thermal_cli.main import main

    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"data": {"synthetic": {"n_pairs": 4}},
                                 "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}}))
    assert main(["run", "--params", str(f), "--workspace", str(tmp_path / "ws"),
                 "--set", "pseudo.score_threshold=1.7"]) == 2
    err = capsys.readouterr().err
    assert "1.7" in err and "[0, 1]" in err
    assert not (tmp_path / "ws").exists()


def test_busy_workspace_is_refused(tmp_path: Path) -> None:
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict
    from pipeline.lock import WorkspaceBusy, workspace_lock

    p = params_from_dict({"data": {"synthetic": {"n_pairs": 4}},
                          "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}})
    with workspace_lock(tmp_path / "ws", "other-run"):
        with pytest.raises(WorkspaceBusy, match="other-run"):
            run_pipeline(p, tmp_path / "ws")
    assert not (tmp_path / "ws" / "stages").exists()


def test_single_step_door_trains_the_teacher_and_checks_order(tmp_path: Path) -> None:
    """``rgb2thermal run --stage NAME`` (dvc.yaml's door): one step at a time; a step whose
    predecessors are not current is refused. The teacher is trained on the RGB adapt split."""
    from core import atomic
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    p = params_from_dict({"data": {"synthetic": {"n_pairs": 6, "seed": 2, **SIZES}},
                          "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco", **TRAIN}},
                          "infer": {"device": "cpu", "min_score": 0.0}})
    ws = tmp_path / "ws"
    with pytest.raises(InputError, match="step 'data' has not run"):
        run_pipeline(p, ws, only="index")
    for name in ("data", "index", "teacher", "infer"):
        rec = run_pipeline(p, ws, flow="dvc", only=name)
        assert rec.status == "succeeded" and [s.name for s in rec.stages] == [name]
    train_result = atomic.read_json(ws / "stages" / "teacher" / "train" / "train_result.json")
    assert train_result["epochs_run"] == 1
    infer_rep = atomic.read_json(ws / "stages" / "infer" / "infer.json.report.json")
    assert infer_rep["counts"]["images_in"] >= 1 and infer_rep["cache_misses"] == infer_rep["counts"]["images_in"]
    assert run_pipeline(p, ws, only="infer").stages[0].reused


@needs_nano
def test_failed_step_is_recorded_and_later_steps_keep_their_outputs(scenario, tmp_path: Path) -> None:
    from pipeline.runs import list_records

    root, _, _, _ = scenario
    (tmp_path / "empty_registry").mkdir()
    with pytest.raises(InputError):
        _run(root, refine__classical_score_threshold=0.95, warp__registry_dir=str(tmp_path / "empty_registry"))
    failed = list_records(root / "ws")[-1]
    assert failed.status == "failed" and failed.error.startswith("step warp: InputError")
    assert [s.name for s in failed.stages] == ["data", "index", "teacher", "infer", "pseudo"]
    assert all(s.reused for s in failed.stages)
    assert not (root / "ws" / "stages" / "warp" / "stage.json").exists()     # not done: redone next time


@needs_nano
def test_until_stops_after_the_named_step(tmp_path: Path) -> None:
    """``rgb2thermal run --until refine``: the thermal pseudo-labels without training anything."""
    from rgb2thermal_cli.main import main
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path, 8)       # seed 11: both splits present
    params = params_from_dict(_params(tmp_path))
    rec = run_pipeline(params, tmp_path / "ws", until="refine")
    assert rec.status == "succeeded"
    assert [s.name for s in rec.stages] == ["data", "index", "teacher", "infer", "pseudo", "warp", "refine"]
    assert (tmp_path / "ws" / "stages" / "refine" / "refined.json").is_file()
    assert not (tmp_path / "ws" / "stages" / "student").exists()
    with pytest.raises(InputError, match="exclude each other"):
        run_pipeline(params, tmp_path / "ws", only="warp", until="refine")
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params(tmp_path)))
    assert main(["run", "--params", str(tmp_path / "params.yaml"), "--workspace", str(tmp_path / "ws"),
                 "--until", "warp"]) == 0
