"""Sweep trials as Dask tasks: two real Dask worker processes (``distributed.LocalCluster``) complete one
study of exactly four trials on one journal storage, each trial once, with distinct numbers, values and
workspaces.

Real components: distributed's LocalCluster (worker processes, one thread each), Optuna's TPE sampler
and journal file storage, and real pipeline trials (the shared YOLOX-nano teacher, a YOLOX student
trained 1 epoch at 128 px) on the generated scenes of tests/test_sweep.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InputError

pytest.importorskip("mmdet")
pytest.importorskip("optuna")
pytest.importorskip("distributed")

from tests.test_pipeline import NANO  # noqa: E402
from tests.test_sweep import _setup  # noqa: E402

needs_nano = pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared teacher absent at {NANO}")


@needs_nano
@pytest.mark.slow
def test_two_dask_workers_complete_one_study_without_duplicates(tmp_path: Path, monkeypatch) -> None:
    import optuna

    from pipeline.runs import list_records
    from pipeline.sweep import SweepPaths, open_study, run_sweep
    from pipeline.sweep_space import load_sweep

    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # inherited by the worker processes and their trial runs
    sweep = _setup(tmp_path, budget={"trials": 4})
    spec = load_sweep(sweep)
    from rgb2thermal_cli.main import main

    assert main(["sweep", "run", str(sweep), "--sweep-dir", str(tmp_path / "study"), "--workers", "2"]) == 0
    trials = open_study(spec, SweepPaths(tmp_path / "study"), None, create=False).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]              # exactly the budget: one trial per task
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert trials[0].params == {"refine.classical_score_threshold": 0.3, "student.train.lr": 0.001}  # the base
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    workspaces = [t.user_attrs["workspace"] for t in trials]
    assert len(set(workspaces)) == 4
    assert all(len(list_records(ws)) == 1 for ws in workspaces)     # no trial ran twice
    assert len({t.user_attrs["dask_worker"] for t in trials}) == 2  # both worker processes ran trials
    # a second call finds the budget spent: no task, no new trial
    run_sweep(spec, tmp_path / "study", workers=2)
    assert len(open_study(spec, SweepPaths(tmp_path / "study"), None, create=False).get_trials()) == 4


def test_a_dask_sweep_needs_a_trial_budget(tmp_path: Path) -> None:
    from pipeline.sweep import run_sweep
    from pipeline.sweep_space import load_sweep

    if not (NANO / "yolox_nano_coco.pth").is_file():
        pytest.skip("shared teacher absent")
    sweep = _setup(tmp_path, budget={"trials": None, "seconds": 60})
    with pytest.raises(InputError, match="needs a trial budget"):
        run_sweep(load_sweep(sweep), tmp_path / "study", workers=2)
    assert not (tmp_path / "study").exists()
