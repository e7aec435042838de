"""Sweeps (Optuna) and the val split: bad spaces fail before any trial, a 3-trial sweep end to end,
resume, pruning, two workers on one storage, the best params re-run to the same metrics, and no
decision ever reads the test split.

Real components: the shared YOLOX-nano teacher, real YOLOX student training (1 epoch, 128 px,
one torch thread), Optuna's TPE sampler, journal storage and pruners. Data: the generated paired
scenes of tests/test_pipeline.py (10 pairs: 8 adapt, 2 test; 40 % of adapt carved out as val).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InputError

pytest.importorskip("mmdet")
pytest.importorskip("optuna")

from tests.test_pipeline import NANO, _folder, _params  # noqa: E402

needs_nano = pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared teacher absent at {NANO}")
SPACE = {"refine.classical_score_threshold": {"low": 0.2, "high": 0.6},
         "student.train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(root: Path, **spec: object) -> Path:
    _folder(root, 10)
    base = _params(root)
    base["data"]["val_fraction"] = 0.4
    base["eval"] = {"baselines": ["source_only"]}
    base["student"]["train"]["lr"] = 0.001
    (root / "params.yaml").write_text(json.dumps(base))
    sweep = {"params": "params.yaml", "study": "t", "pruner": {"type": "none"}, "budget": {"trials": 3},
             "space": SPACE, **spec}
    (root / "sweep.yaml").write_text(json.dumps(sweep))
    return root / "sweep.yaml"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------ validation
@needs_nano
@pytest.mark.parametrize("space, fixed, message", [
    ({"refine.nope": {"low": 0.1, "high": 0.3}}, {}, "unknown key(s) ['refine.nope']"),
    ({"refine.classical_score_threshold": {"low": 0.5, "high": 1.5}}, {}, "= 1.5 is rejected"),
    ({"data.val_fraction": {"low": 0.1, "high": 0.3}}, {}, "may not set 'data.val_fraction'"),
    ({"student.train.work_dir": {"choices": ["x"]}}, {}, "which the pipeline sets itself"),
    ({"fuse.method": {"choices": ["wbf", "vote"]}}, {}, "'vote' is rejected"),
    ({"refine.min_iou": {"low": 0.1, "high": 0.3}}, {"student.train.val_interval": 5}, "sets it itself"),
])
def test_bad_space_fails_before_any_trial(tmp_path: Path, space: dict, fixed: dict, message: str) -> None:
    from pipeline.sweep import run_sweep
    from pipeline.sweep_space import load_sweep

    sweep = _setup(tmp_path, space=space, fixed=fixed)
    with pytest.raises(InputError) as err:
        run_sweep(load_sweep(sweep), tmp_path / "study")
    assert message in str(err.value)
    assert not (tmp_path / "study").exists()          # nothing written, no study, no trial


def test_malformed_space_and_base_without_val_are_refused(tmp_path: Path) -> None:
    from pipeline.sweep import run_sweep
    from pipeline.sweep_space import load_sweep

    (tmp_path / "s.yaml").write_text(json.dumps({"params": "p.yaml", "space": {"a.b": {"low": 0.5, "high": 0.5}}}))
    with pytest.raises(InputError, match="empty range"):
        load_sweep(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(json.dumps({"params": "p.yaml", "space": {}}))
    with pytest.raises(InputError, match="space"):
        load_sweep(tmp_path / "s.yaml")
    if not (NANO / "yolox_nano_coco.pth").is_file():
        pytest.skip("shared teacher absent")
    sweep = _setup(tmp_path / "d")
    base = json.loads((tmp_path / "d" / "params.yaml").read_text())
    del base["data"]["val_fraction"]
    (tmp_path / "d" / "params.yaml").write_text(json.dumps(base))
    with pytest.raises(InputError, match="no val split"):
        run_sweep(load_sweep(sweep), tmp_path / "study")


@needs_nano
def test_val_fraction_carves_stable_val_frames_out_of_adapt(tmp_path: Path) -> None:
    from core import atomic
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path, 10)
    params = _params(tmp_path)
    params["data"]["val_fraction"] = 0.4
    run_pipeline(params_from_dict(params), tmp_path / "ws", until="index")
    ix = tmp_path / "ws" / "stages" / "index"
    ids = {n: {im["id"] for im in atomic.read_json(ix / f"{n}.json")["images"]}
           for n in ("thermal_val", "thermal_adapt", "thermal_adapt_images", "rgb_adapt", "thermal_test")}
    assert ids["thermal_val"] and atomic.read_json(ix / "thermal_val.json")["annotations"]
    assert ids["thermal_adapt"] == ids["thermal_adapt_images"] == ids["rgb_adapt"]
    assert not ids["thermal_val"] & ids["thermal_adapt"] and not ids["thermal_val"] & ids["thermal_test"]
    # membership depends on the pair id only: a second workspace chooses the same frames
    run_pipeline(params_from_dict(params), tmp_path / "ws2", until="index")
    again = {im["id"] for im in atomic.read_json(tmp_path / "ws2" / "stages" / "index" / "thermal_val.json")["images"]}
    assert again == ids["thermal_val"]


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    if not (NANO / "yolox_nano_coco.pth").is_file():
        pytest.skip("shared teacher absent")
    from rgb2thermal_cli.main import main

    root = tmp_path_factory.mktemp("sweep")
    sweep = _setup(root)
    assert main(["sweep", "run", str(sweep), "--sweep-dir", str(root / "study")]) == 0
    return root, sweep


@pytest.mark.slow
def test_three_trial_sweep_end_to_end(swept, capsys) -> None:
    import optuna

    from pipeline.runs import list_records
    from pipeline.sweep import SweepPaths, open_study
    from pipeline.sweep_space import load_sweep

    root, sweep = swept
    spec = load_sweep(sweep)
    study = open_study(spec, SweepPaths(root / "study"), None, create=False)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"refine.classical_score_threshold": 0.3, "student.train.lr": 0.001}   # the base recipe
    for t in trials:
        (rec,) = list_records(t.user_attrs["workspace"])
        assert rec.status == "succeeded" and rec.run_id == t.user_attrs["run_id"]
        assert t.value == rec.metrics["val"]["adapted"]["all"]["mAP_50"]
        assert t.user_attrs["test"]["all"] == rec.metrics["eval"]["adapted"]["all"]["mAP_50"]
        if t.number > 0:   # later trials reuse every step a sampled value does not change
            assert all(rec.stage(s).reused for s in ("data", "index", "teacher", "infer", "pseudo", "warp"))
            assert not rec.stage("refine").reused
    files = root / "study"
    assert (files / "best_params.yaml").is_file() and (files / "trials.json").is_file()
    for name in ("optimization_history", "parallel_coordinate"):
        assert (files / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    from rgb2thermal_cli.main import main

    assert main(["sweep", "show", str(sweep), "--sweep-dir", str(files)]) == 0
    out = capsys.readouterr().out
    assert "Best: trial" in out and "| 2 |" in out and "test person" in out


@pytest.mark.slow
def test_decisions_read_only_the_val_split(swept) -> None:
    from core import atomic
    from pipeline.runs import list_records
    from pipeline.sweep import objective_value

    root, _ = swept
    ws = root / "study" / "trials" / "0000" / "workspace"
    (rec,) = list_records(ws)
    value = objective_value(rec, "adapted.all.mAP_50")
    rec.metrics["eval"] = {"adapted": {"all": {"mAP_50": 0.99}}}        # the test numbers cannot move it
    assert objective_value(rec, "adapted.all.mAP_50") == value
    del rec.metrics["val"]
    with pytest.raises(InputError, match="no 'val' step"):
        objective_value(rec, "adapted.all.mAP_50")
    # pruning and best checkpoints: the student validated on the val frames' thermal labels, not on test
    cfg = "".join((ws / "stages" / "student" / "train" / "config.py").read_text().split())
    val_file = ws / "stages" / "index" / "thermal_val.json"
    assert f"val_evaluator=dict(ann_file='{val_file}'" in cfg and "thermal_test" not in cfg
    test_ids = {im["id"] for im in atomic.read_json(ws / "stages" / "index" / "thermal_test.json")["images"]}
    assert not test_ids & {im["id"] for im in atomic.read_json(val_file)["images"]}
    assert atomic.read_json(ws / "stages" / "student" / "train" / "val_history.json")[0]["epoch"] == 1


@pytest.mark.slow
def test_best_params_rerun_to_the_same_metrics_and_resume_continues(swept) -> None:
    from pipeline.executor import run_pipeline
    from pipeline.params import load_params
    from pipeline.runs import list_records
    from pipeline.sweep import SweepPaths, best_trial, open_study
    from pipeline.sweep_space import load_sweep
    from rgb2thermal_cli.main import main

    root, sweep = swept
    paths = SweepPaths(root / "study")
    study = open_study(load_sweep(sweep), paths, None, create=False)
    best = best_trial(study)
    rec = run_pipeline(load_params(paths.best_params), root / "rerun", cache_root=paths.cache)
    (trial_rec,) = list_records(best.user_attrs["workspace"])
    for step in ("val", "eval"):    # every number (the Markdown table also names the files it read)
        assert {k: v for k, v in rec.metrics[step].items() if k != "table_markdown"} == \
               {k: v for k, v in trial_rec.metrics[step].items() if k != "table_markdown"}

    # resume: the same command with a larger budget continues the study where it stopped
    assert main(["sweep", "run", str(sweep), "--sweep-dir", str(paths.root), "--trials", "4"]) == 0
    numbers = [t.number for t in open_study(load_sweep(sweep), paths, None, create=False).get_trials()]
    assert numbers == [0, 1, 2, 3]


@needs_nano
@pytest.mark.slow
def test_pruned_trial_is_recorded_as_pruned(tmp_path: Path) -> None:
    import optuna

    from pipeline.runs import list_records
    from pipeline.sweep import SweepPaths, open_study, run_sweep
    from pipeline.sweep_space import load_sweep

    # a threshold above any mAP prunes at the first report (after epoch 1 of 20; an epoch of this tiny
    # set can be shorter than the sweep's poll, so more validations may be read at once; with 4 epochs
    # the student once finished before the poll stopped it, on a loaded machine)
    sweep = _setup(tmp_path, pruner={"type": "threshold", "lower": 1.01}, budget={"trials": 1},
                   fixed={"student.train.epochs": 20})
    run_sweep(load_sweep(sweep), tmp_path / "study")
    (t,) = open_study(load_sweep(sweep), SweepPaths(tmp_path / "study"), None, create=False).get_trials()
    assert t.state == optuna.trial.TrialState.PRUNED and t.last_step == 1
    ws = Path(t.user_attrs["workspace"])
    assert not (ws / "stages" / "student" / "stage.json").exists()      # the killed step is not "done"
    assert [r.status for r in list_records(ws)] != ["succeeded"]
    rows = json.loads((tmp_path / "study" / "trials.json").read_text())
    assert rows[0]["state"] == "PRUNED" and rows[0]["pruned_at_epoch"] == 1


@needs_nano
@pytest.mark.slow
def test_two_workers_complete_one_study_without_duplicates(tmp_path: Path) -> None:
    from pipeline.sweep import SweepPaths, open_study
    from pipeline.sweep_space import load_sweep

    sweep = _setup(tmp_path, budget={"trials": 4})
    storage = tmp_path / "shared.journal"
    cmd = [sys.executable, "-m", "rgb2thermal_cli.main", "sweep", "run", str(sweep), "--sweep-dir",
           str(tmp_path / "study"), "--storage", str(storage)]
    workers = [subprocess.Popen(cmd + ["--worker", str(w)], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for w in (0, 1)]
    outs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = open_study(load_sweep(sweep), SweepPaths(tmp_path / "study"), str(storage), create=False).get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5       # a worker may start one as the other ends
    assert all(t.state.name == "COMPLETE" for t in trials)
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(params) == len(set(params))
    workspaces = [t.user_attrs["workspace"] for t in trials]
    assert len(set(workspaces)) == len(workspaces)


@pytest.mark.slow
def test_prefect_door_publishes_the_table_and_plots(swept, prefect_harness, quick_prefect) -> None:
    """The flow runs the same sweep (here its budget is spent: no new trial) and publishes the trials
    table and Optuna's plots as artifacts."""
    from prefect.client.orchestration import get_client

    from flows.sweep import sweep_flow

    root, sweep = swept
    before = sorted(p.name for p in (root / "study" / "trials").iterdir())
    out = sweep_flow(sweep_file=str(sweep), sweep_dir=str(root / "study"))
    assert sorted(p.name for p in (root / "study" / "trials").iterdir()) == before
    assert out["best"]["number"] in {r["number"] for r in out["trials"]}
    with get_client(sync_client=True) as client:
        table = client._client.get("/artifacts/sweep-trials/latest")
        history = client._client.get("/artifacts/sweep-history/latest")
    table.raise_for_status()
    history.raise_for_status()
    assert "Best: trial" in table.json()["data"]
    assert history.json()["data"].startswith("data:image/png;base64,")


def test_a_seeded_history_is_not_reported_as_this_trials(tmp_path: Path) -> None:
    """The seed workspace's val history is hard-linked into a new trial: until this trial's training
    writes its own (atomic rename: a new inode), the pruner must not see the previous trial's numbers."""
    import os

    from core import atomic
    from pipeline.sweep import _inode, _report

    class Trial:
        def __init__(self) -> None:
            self.reports: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((value, step))

        def should_prune(self) -> bool:       # prunes at the first value below 0.1
            return any(v < 0.1 for v, _ in self.reports)

    seed = atomic.write_json(tmp_path / "seed.json", [{"epoch": 1, "coco/bbox_mAP_50": 0.9}])
    mine = tmp_path / "trial.json"
    os.link(seed, mine)
    trial = Trial()
    assert _report(trial, mine, 0, _inode(seed)) == 0 and trial.reports == []
    atomic.write_json(mine, [{"epoch": 1, "coco/bbox_mAP_50": 0.2}, {"epoch": 2, "coco/bbox_mAP_50": -1}])
    assert _report(trial, mine, 0, _inode(seed)) == 2 and trial.reports == [(0.2, 1)]   # -1: no value
    # several validations read at once: reporting stops at the first one the pruner prunes on
    atomic.write_json(mine, [*atomic.read_json(mine), {"epoch": 3, "coco/bbox_mAP_50": 0.05},
                             {"epoch": 4, "coco/bbox_mAP_50": 0.5}])
    assert _report(trial, mine, 2, _inode(seed)) == 3 and trial.reports == [(0.2, 1), (0.05, 3)]
