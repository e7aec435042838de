"""Per-image stages sharded over Dask (``compute``): the same output bytes as one process, each worker
loads its model once, and a worker killed mid-stage costs only the frames of its chunk.

Real components: a ``distributed.LocalCluster`` of 2 worker processes, the real mmdet YOLOX-tiny with
calibrated random weights of ``tests/test_infer.py`` (a saved checkpoint: its fingerprint is the same
in every process), the classical refiner. The killed worker is SIGKILLed from the test while one of
its chunks is half written to the cache.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import thermal_gt
from core.atomic import read_json
from core.coco import load_dataset, save_dataset

N = 24          # frames
CHUNK = 4


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """``N`` generated thermal frames with their labels; ``file_name``s absolute."""
    return thermal_gt(tmp_path_factory.mktemp("synth"), N, 5, "gt.json")


@pytest.fixture()
def with_bad_frame(frames: Path, tmp_path: Path) -> Path:
    """The frames with one of them an undecodable file (skipped and reported the same either way)."""
    gt = load_dataset(frames)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    gt["images"][6]["file_name"] = str(bad)
    save_dataset(tmp_path / "gt_bad.json", gt)
    return tmp_path / "gt_bad.json"


@pytest.fixture(scope="module")
def shards():
    """One local cluster of 2 worker processes for the module's equality checks."""
    from tasks.compute import ComputeParams
    from tasks.shard import Shards

    s = Shards(ComputeParams(workers=2, chunk_size=CHUNK))
    yield s
    s.close()


def _infer_params(det: tuple[Path, Path]):
    from tasks.infer import InferParams

    return InferParams(config=str(det[0]), checkpoint=str(det[1]), device="cpu", batch_size=2, min_score=0.01)


def test_sharded_infer_and_refine_write_the_bytes_of_one_process(tmp_path: Path, with_bad_frame: Path, frames: Path,
                                                                 tiny_detector, shards, one_torch_thread) -> None:
    from tasks.infer import run_infer
    from tasks.refine import RefineParams, run_refine

    params = _infer_params(tiny_detector)
    one = run_infer(frames, tmp_path / "one.json", params, cache_dir=tmp_path / "c_one")
    two = run_infer(frames, tmp_path / "two.json", params, cache_dir=tmp_path / "c_two", compute=shards)
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (one.cache_misses, one.cache_hits) == (N, 0)
    assert (two.cache_misses, two.cache_hits) == (0, N)        # the chunks filled the cache
    c = two.compute
    assert (c["chunks"], c["chunk_frames"], c["frames_computed"], c["chunk_cached"]) == (6, [4] * 6, N, [0] * 6)
    assert c["workers"] == 2 and len(c["model_loads"]) == 2 and set(c["model_loads"].values()) == {1}  # once per worker
    assert c["scheduler"].startswith("tcp://") and len(c["chunk_seconds"]) == 6

    # an unreadable frame: skipped and reported as in one process (the stage's own pass re-finds it)
    bad_one = run_infer(with_bad_frame, tmp_path / "b1.json", params, cache_dir=tmp_path / "c_b1")
    bad_two = run_infer(with_bad_frame, tmp_path / "b2.json", params, cache_dir=tmp_path / "c_b2", compute=shards)
    assert bad_two.skipped_images == bad_one.skipped_images and len(bad_one.skipped_images) == 1
    assert (bad_two.compute["frames_skipped"], bad_two.compute["frames_computed"], bad_two.cache_hits) == (1, N - 1, N - 1)
    assert load_dataset(tmp_path / "b2.json")["images"] == load_dataset(tmp_path / "b1.json")["images"]

    rp = RefineParams(method="classical")
    r_one = run_refine(frames, tmp_path / "r_one.json", rp, cache_dir=tmp_path / "r_c_one")
    r_two = run_refine(frames, tmp_path / "r_two.json", rp, cache_dir=tmp_path / "r_c_two", compute=shards)
    assert (tmp_path / "r_two.json").read_bytes() == (tmp_path / "r_one.json").read_bytes()
    assert r_two.counts == r_one.counts and r_one.counts["replace"] > 0
    assert (r_two.cache_misses, r_two.cache_hits) == (0, r_one.cache_misses) and r_one.cache_misses > 0
    assert r_two.compute["frames_computed"] == r_one.cache_misses


def test_sharded_eval_on_a_users_scheduler_scores_the_same(tmp_path: Path, frames: Path, tiny_detector,
                                                           one_torch_thread) -> None:
    """``compute.scheduler``: the stage connects to a cluster it did not start, and leaves it running."""
    from distributed import Client, LocalCluster

    from tasks.compare import evaluate_columns
    from tasks.compute import ComputeParams

    params = {"source_only": _infer_params(tiny_detector)}
    kw = {"columns": ["source_only"], "metrics": ["mAP", "mAP_50"]}
    one = evaluate_columns(frames, params, tmp_path / "one", cache_dir=tmp_path / "c_one", **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as users:
        two = evaluate_columns(frames, params, tmp_path / "two", cache_dir=tmp_path / "c_two",
                               compute=ComputeParams(scheduler=users.scheduler_address, chunk_size=8), **kw)
        with Client(users) as client:
            assert len(client.scheduler_info()["workers"]) == 2       # still running: the user's to stop
    assert two.evaluation.metrics == one.evaluation.metrics
    assert two.predictions["source_only"].read_bytes() == one.predictions["source_only"].read_bytes()
    assert (one.cache_misses, two.cache_misses, two.cache_hits) == (N, 0, N)
    report = read_json(tmp_path / "two" / "infer_source_only.json.report.json")
    assert report["compute"]["chunks"] == 3 and report["compute"]["frames_computed"] == N


def _entry_paths(gt: Path, params, fingerprint: str, cache_dir: Path) -> list[Path]:
    """Where each frame's infer cache entry goes (image bytes + model + parameters), in frame order."""
    from core.hashing import file_sha256
    from core.image_cache import ImageCache
    from tasks.infer import CACHE_SCHEMA

    cache = ImageCache(cache_dir, CACHE_SCHEMA)
    return [cache.path(cache.key(image=file_sha256(Path(im["file_name"])), model=fingerprint,
                                 params=params.cache_params())) for im in load_dataset(gt)["images"]]


def _gone(pid: int, timeout: float = 10.0) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


class _Killer(threading.Thread):
    """SIGKILLs the worker process running a chunk that is partly in the cache (a worker lost mid-chunk),
    then counts that chunk's entries once the process is gone: what its rescheduled run must find cached."""

    def __init__(self, client, entries: list[Path], chunk: int) -> None:
        super().__init__(daemon=True)
        self.client, self.entries, self.chunk = client, entries, chunk
        self.pids = client.run(os.getpid)          # worker address -> pid
        self.stop = threading.Event()
        self.killed: tuple[int, int, int] | None = None       # (chunk, pid, its entries present after the kill)

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            for i in range(0, len(self.entries) // self.chunk):
                done = sum(p.exists() for p in self.entries[i * self.chunk:(i + 1) * self.chunk])
                if 0 < done < self.chunk and self._kill(i):
                    return
            time.sleep(0.003)

    def _kill(self, i: int) -> bool:
        prefix = f"infer-chunk-{i:05d}-"
        for addr, keys in self.client.processing().items():
            if any(str(k).startswith(prefix) for k in keys) and addr in self.pids:
                pid = self.pids[addr]
                os.kill(pid, signal.SIGKILL)
                assert _gone(pid)
                present = sum(p.exists() for p in self.entries[i * self.chunk:(i + 1) * self.chunk])
                self.killed = (i, pid, present)
                return True
        return False


def test_a_worker_killed_mid_chunk_costs_only_its_unfinished_frames(tmp_path: Path, frames: Path, tiny_detector,
                                                                    one_torch_thread) -> None:
    from detection.detector import load_detector
    from tasks.compute import ComputeParams
    from tasks.infer import run_infer
    from tasks.shard import Shards

    # batch 1: the killed chunk's unfinished frames re-run in other batches than one process forms, and a
    # detector's scores move in their 6th decimal with the batch it ran in (module docstring of tasks.shard)
    params, chunk = _infer_params(tiny_detector).replace(batch_size=1), 8
    run_infer(frames, tmp_path / "one.json", params, cache_dir=tmp_path / "c_one")
    entries = _entry_paths(frames, params, load_detector(params.config, params.checkpoint, "cpu").fingerprint,
                           tmp_path / "c_two")
    shards = Shards(ComputeParams(workers=2, chunk_size=chunk))
    try:
        killer = _Killer(shards.client(), entries, chunk)
        killer.start()
        rep = run_infer(frames, tmp_path / "two.json", params, cache_dir=tmp_path / "c_two", compute=shards)
        killer.stop.set()
        killer.join()
        now = shards.client().run(os.getpid)
    finally:
        shards.close()
    assert killer.killed is not None, "no chunk was caught half done: the stage ended before the kill"
    i, pid, present = killer.killed
    assert 0 < present < chunk and pid not in now.values()         # killed mid-chunk; the nanny started a new one
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    c = rep.compute
    # the rescheduled chunk found exactly the frames the dead worker had cached; no other frame ran twice
    assert c["chunk_cached"] == [present if k == i else 0 for k in range(N // chunk)]
    assert c["frames_computed"] == N - present
    assert (rep.cache_misses, rep.cache_hits) == (0, N)
    assert sorted(p.name for p in (tmp_path / "c_two").glob("*/*.json")) == sorted(p.name for p in entries)  # one each


def test_compute_is_in_no_step_key_and_no_dvc_params() -> None:
    from pipeline.dvcgen import dvc_yaml
    from pipeline.params import load_params
    from pipeline.plan import plan
    from tasks.compute import compute_overrides

    base = {"data": {"synthetic": {"n_pairs": 8}}, "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}}
    here = load_params(data=dict(base))
    sharded = load_params(data=dict(base), overrides=compute_overrides(3, None) + ["compute.chunk_size=16"])
    assert (sharded.compute.workers, sharded.compute.chunk_size, here.compute.workers) == (3, 16, 0)
    steps = plan(sharded)
    assert [s.sections for s in steps] == [s.sections for s in plan(here)]
    assert all(not sec.startswith("compute") for s in steps for sec in s.sections)
    assert all(sharded.section(sec) == here.section(sec) for s in steps for sec in s.sections)
    assert dvc_yaml(sharded, ".") == dvc_yaml(here, ".")


def test_compute_parameters_are_checked() -> None:
    from core.errors import InputError
    from pipeline.params import load_params
    from tasks.compute import ComputeParams, compute_overrides, shard_session
    from tasks.shard import chunked

    base = {"data": {"synthetic": {"n_pairs": 8}}, "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}}
    with pytest.raises(InputError, match="compute"):
        load_params(data=dict(base), overrides=compute_overrides(2, "tcp://localhost:8786"))
    with pytest.raises(InputError, match="tcp://host:8786"):
        load_params(data=dict(base), overrides=compute_overrides(None, "localhost:8786"))
    assert load_params(data=dict(base), overrides=compute_overrides(None, "tcp://h:1")).compute.scheduler == "tcp://h:1"
    with shard_session(ComputeParams()) as s:
        assert s is None                                   # workers 0: in this process, no Dask
    # chunks start where one process starts a batch (batch 4): 10 frames in chunks of 8, not 5
    assert [len(c) for c in chunked(list(range(10)), 5, 4)] == [8, 2]
    assert [len(c) for c in chunked(list(range(10)), 5, 1)] == [5, 5]


def test_a_pipeline_run_holds_one_cluster_started_on_first_use(tmp_path: Path) -> None:
    from pipeline.executor import pipeline_run
    from pipeline.params import load_params
    from tasks.compute import compute_overrides
    from tasks.shard import Shards

    base = {"data": {"synthetic": {"n_pairs": 8}}, "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}}
    p = load_params(data=dict(base), overrides=compute_overrides(2, None))
    with pipeline_run(p, tmp_path / "ws") as ctx:
        shards = ctx.compute
        assert isinstance(shards, Shards) and shards.params == p.compute
        assert shards._client is None                  # nothing sharded yet: no cluster started
    with pipeline_run(load_params(data=dict(base)), tmp_path / "ws") as ctx:
        assert ctx.compute is None                     # compute.workers 0: every step in this process
