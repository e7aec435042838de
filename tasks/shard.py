"""Per-image stages sharded over Dask (``distributed``): chunks of frames fill the stage's cache.

Why this shape: ``infer`` and ``refine`` already keep every frame's result in a content-addressed
per-image cache (:class:`core.image_cache.ImageCache`: atomic entries keyed by image bytes + model
fingerprint + parameters). So a sharded stage only has to *fill that cache* on the workers: it
splits its frames into chunks, each chunk's Dask task runs the stage's own per-frame loop on a
worker (``tasks.infer._infer_chunk``, ``tasks.refine._refine_chunk``) and returns small counts,
never detections. The stage then runs its ordinary one-process pass, which is all cache hits and
writes its COCO output exactly as without Dask (``tests/test_sharding.py``: byte-identical files).
Consequences:

- two workers never see a half entry (atomic writes), and a re-run reuses every finished frame;
- a worker lost mid-stage costs only the frames of its chunk not yet cached: the scheduler
  reschedules the chunk on another worker, whose pass finds the finished frames as cache hits;
  chunk results are taken off the cluster as they complete (:func:`distributed.as_completed`,
  then released), so a finished chunk held by a dying worker is not recomputed either;
- skipped frames (unreadable, wrong size) are re-found by the one-process pass and reported the
  same as in one process.

Each worker loads a stage's model once, not once per chunk: :class:`WorkerModels`, a Dask worker
plugin (registered by the client, kept on each worker object, re-sent to a restarted worker), holds
the last few models by fingerprint. ``Shards`` is one client, on a :class:`distributed.LocalCluster`
of worker processes (``compute.workers``) or on the user's scheduler (``compute.scheduler``),
started on first use, so a pipeline run whose sharded steps are all reused starts nothing.

Chunks are cut at multiples of the stage's batch size, so a cold sharded run forms the same
detector batches as one process and writes the same bytes. The one exception is a batch *size*
effect the detector already has in one process (``tasks.infer.InferParams.batch_size``: a score may
move in its 6th decimal when a frame is inferred in a smaller batch): after an unreadable frame, or
in a chunk that was partly cached, the sharded run's batches are grouped per chunk and one process's
over the whole set, so such scores can differ in the last digit, as they do between a cold and a
partly cached one-process run. Any two sharded runs (1 or N workers) form the same chunks and
batches. The classical refiner has no batches (identical always).

The same holds for the torch thread count: workers run ``threads_per_worker`` threads (default 1)
and a detector's floating-point sums depend on it, so the bytes equal a one-process run at that
thread count (32 real frames: a 1-thread process and two sharded workers wrote the same file; a
2-thread process differed in the 6th decimal of some scores).
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client, LocalCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from core.errors import InputError
from core.stage_report import StageReport
from tasks.compute import ComputeParams

log = logging.getLogger(__name__)

#: Name of the :class:`WorkerModels` plugin on every worker.
PLUGIN = "rgb2thermal-models"


class WorkerModels(WorkerPlugin):
    """The models one Dask worker process has loaded, by key (model fingerprint + how it is built).

    Why a plugin rather than a module-level dict: it lives and dies with the worker object (no
    process-global state), the scheduler sends it to workers that join or restart, and
    ``idempotent`` keeps the loaded models when a later stage call registers it again.
    ``keep``: models held at once (least recently used dropped first), so a long-lived user
    cluster does not accumulate every model it ever ran.
    """

    idempotent = True

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep

    def setup(self, worker: Any) -> None:
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()
        self.loads = 0

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        """The model of ``key``, loaded by ``load()`` the first time this worker needs it."""
        with self.lock:                    # threads_per_worker > 1: two chunks must not load it twice
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
            model = load()
            self.loads += 1
            self.models[key] = model
            while len(self.models) > self.keep:
                self.models.popitem(last=False)
            return model


def worker_model(key: str, load: Callable[[], Any]) -> tuple[Any, int]:
    """On a Dask worker: the model of ``key`` (loaded once per worker process by ``load()``).

    Args:
        key: what identifies the model: its fingerprint (content of config + weights) and how it is
            built (device).
        load: builds the model when this worker has not loaded ``key`` yet (a picklable callable).

    Returns:
        ``(model, loads)``: the model and how many models this worker process has loaded so far.
    """
    plugin = get_worker().plugins[PLUGIN]
    return plugin.get(key, load), plugin.loads


def chunk_result(report: StageReport, t0: float, loads: int) -> dict[str, Any]:
    """What one chunk task returns to the client: counts only (results travel through the cache)."""
    return {"hits": report.cache_hits, "misses": report.cache_misses, "skipped": len(report.skipped_images),
            "seconds": round(time.perf_counter() - t0, 3), "worker": get_worker().address, "model_loads": loads}


def chunked(items: Sequence[Any], chunk_size: int, batch_size: int) -> list[list[Any]]:
    """``items`` in consecutive chunks of ``chunk_size`` rounded up to a multiple of ``batch_size``.

    Why a multiple: each chunk then starts a new batch where one process would, so a cold sharded
    run forms the very batches of a one-process run (the last chunk may be shorter).
    """
    size = math.ceil(chunk_size / batch_size) * batch_size
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


#: Dask's default for worker processes, unset for ours (see :func:`_local_cluster`).
_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def _local_cluster(workers: int, threads: int) -> LocalCluster:
    """A LocalCluster of ``workers`` processes whose glibc keeps its dynamic malloc thresholds.

    Why: Dask starts worker processes with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed memory
    back to the OS). Setting it at all switches off glibc's dynamic mmap threshold, so every
    detector forward maps and unmaps its large buffers afresh: YOLOX-nano on 8 frames of 640x480
    took 1.0-1.3 s per batch in such a process and 0.35-0.40 s without it (1 thread each, this
    machine). The setting is read when each nanny is made, so restarted workers keep it; the
    config change is scoped to this call.
    """
    import dask

    with dask.config.set({_TRIM: None}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None)


def _connect(address: str) -> Client:
    """A client of the user's scheduler; an unreachable one is an InputError naming the address."""
    try:
        return Client(address, timeout="30s")
    except OSError as exc:                      # distributed raises OSError on a connect timeout/refusal
        raise InputError(f"cannot reach the Dask scheduler at {address} ({exc})", "compute.scheduler",
                         "start it (`dask scheduler`, dask-jobqueue, ...) or fix the address "
                         "(--dask-address / compute.scheduler)") from None


class Shards:
    """One Dask client for the sharded stages of a run, started on first use; :meth:`close` ends it.

    ``compute.workers`` >= 1: a :class:`distributed.LocalCluster` of that many worker processes
    (``threads_per_worker`` threads each, no dashboard) that lives as long as this object;
    ``compute.scheduler``: a client of the user's cluster (left running on close).
    Thread-safe: the Prefect flow's concurrent steps may share one.
    """

    sharded = True

    def __init__(self, params: ComputeParams) -> None:
        self.params = params
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None

    def client(self) -> Client:
        """The client, connecting (or starting the local cluster) on first use."""
        with self._lock:
            if self._client is None:
                p = self.params
                if p.scheduler is not None:
                    self._client = _connect(p.scheduler)
                else:
                    self._cluster = _local_cluster(p.workers, p.threads_per_worker)
                    self._client = Client(self._cluster)
                self._client.register_plugin(WorkerModels(), name=PLUGIN)
                log.info("sharding on Dask scheduler %s", self._client.scheduler.address)
            return self._client

    def close(self) -> None:
        """Close the client and the local cluster this object started (never the user's cluster)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._cluster is not None:
                self._cluster.close()
            self._client = self._cluster = None

    def run(self, stage: str, fn: Callable[..., dict[str, Any]], chunks: Sequence[Any], *args: Any) -> dict[str, Any]:
        """``fn(chunk, *args)`` for every chunk on the cluster; what the stage report records.

        Args:
            stage: the stage's name (task keys ``<stage>-chunk-<i>-<token>``).
            fn: a module-level function returning :func:`chunk_result`'s dict.
            chunks: one item per task (e.g. the COCO image entries of one chunk).
            args: the arguments every chunk shares (small: parameters, folders).

        Returns:
            ``{"scheduler", "workers", "chunks", "chunk_frames", "chunk_seconds", "chunk_workers",
            "chunk_cached", "frames_computed", "frames_cached", "frames_skipped", "model_loads", "seconds"}``:
            per chunk (in chunk order) its frames, seconds, worker address and frames found cached (a
            chunk rescheduled after its worker died finds the frames that worker finished), then totals,
            ``model_loads`` per worker address (models that worker process has loaded).
        """
        t0 = time.perf_counter()
        client = self.client()
        token = uuid.uuid4().hex[:8]
        futures = {client.submit(fn, chunk, *args, key=f"{stage}-chunk-{i:05d}-{token}", pure=False,
                                 retries=self.params.retries): i for i, chunk in enumerate(chunks)}
        results: list[dict[str, Any]] = [{} for _ in chunks]
        try:
            for fut, res in as_completed(list(futures), with_results=True):
                results[futures[fut]] = res
                fut.release()          # off the cluster: a worker lost later cannot make it run again
        finally:
            client.cancel([f for f in futures if f.status == "pending"])
        return self._summary(results, [len(c) for c in chunks], time.perf_counter() - t0)

    def _summary(self, results: list[dict[str, Any]], sizes: list[int], seconds: float) -> dict[str, Any]:
        client = self.client()
        loads: dict[str, int] = {}
        for r in results:
            loads[r["worker"]] = max(loads.get(r["worker"], 0), r["model_loads"])
        return {"scheduler": client.scheduler.address, "workers": len(client.scheduler_info()["workers"]),
                "chunks": len(results), "chunk_frames": sizes, "chunk_seconds": [r["seconds"] for r in results],
                "chunk_workers": [r["worker"] for r in results],
                "chunk_cached": [r["hits"] for r in results],
                "frames_computed": sum(r["misses"] for r in results), "frames_cached": sum(r["hits"] for r in results),
                "frames_skipped": sum(r["skipped"] for r in results), "model_loads": loads,
                "seconds": round(seconds, 3)}
