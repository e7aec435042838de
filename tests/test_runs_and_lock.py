"""Run records and the workspace lock."""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from data.fingerprint import dataset_fingerprint
from pipeline import runs
from core.errors import InputError
from pipeline.lock import WorkspaceBusy, workspace_lock


def _hold(ws: str, seconds: float, ready) -> None:
    with workspace_lock(ws, "holder"):
        ready.set()
        time.sleep(seconds)


def test_second_run_fails_clearly_then_waits(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), 3.0, ready))
    proc.start()
    try:
        assert ready.wait(60)
        with pytest.raises(WorkspaceBusy, match="in use by run holder"):
            with workspace_lock(tmp_path, "second"):
                pass
        t0 = time.monotonic()
        with workspace_lock(tmp_path, "second", wait_seconds=60, poll_seconds=0.1):
            waited = time.monotonic() - t0
        assert waited > 0.1
    finally:
        proc.join(60)


def test_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), 60.0, ready))
    proc.start()
    assert ready.wait(60)
    proc.kill()
    proc.join(30)
    with workspace_lock(tmp_path, "after-kill"):
        pass


def _record(run_id: str, person: float, thr: float) -> runs.RunRecord:
    rec = runs.RunRecord(run_id=run_id, flow="adapt", status="succeeded", started=runs.now(),
                         params={"pseudo": {"score_threshold": thr}, "train": {"epochs": 3}})
    rec.stages.append(runs.StageRecord("infer", 1.5, cache_hits=3, cache_misses=1))
    rec.metrics = {"eval": {"adapted": {"person": {"mAP": person / 2, "mAP_50": person},
                                        "all": {"mAP": 0.1, "mAP_50": 0.2}}}}
    return rec


def test_records_round_trip_list_show_compare(tmp_path: Path) -> None:
    a, b = _record("20260101T000000-adapt-aaaaaa", 0.4, 0.5), _record("20260102T000000-adapt-bbbbbb", 0.6, 0.7)
    for r in (b, a):
        runs.save_record(tmp_path, r)
    listed = runs.list_records(tmp_path)
    assert [r.run_id for r in listed] == [a.run_id, b.run_id]
    assert runs.load_record(tmp_path, a.run_id).stage("infer").cache_hits == 3
    assert "0.200" in runs.format_list(listed)
    assert "| infer | 1.50 | 3 | 1 | no |" in runs.format_show(a)
    table = runs.format_compare(listed)
    assert "| person | 0.200 | 0.400 | 0.300 | 0.600 |" in table
    assert "`pseudo.score_threshold`: 0.5 / 0.7" in table and "train.epochs" not in table
    with pytest.raises(InputError, match="no run record"):
        runs.load_record(tmp_path, "nope")


def test_dataset_fingerprint_follows_content_and_dvc(tmp_path: Path) -> None:
    ds = tmp_path / "flir_v1"
    ds.mkdir()
    (ds / "a.png").write_bytes(b"1")
    first = dataset_fingerprint(ds)
    assert first.startswith("sha256:") and dataset_fingerprint(ds) == first
    (ds / "b.png").write_bytes(b"2")
    assert dataset_fingerprint(ds) != first
    (tmp_path / "flir_v1.dvc").write_text("outs:\n- md5: abc123.dir\n  path: flir_v1\n")
    assert dataset_fingerprint(ds) == "dvc:abc123.dir"
