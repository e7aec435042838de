"""Where the per-image stages run: in this process, or sharded over a Dask cluster (``compute``).

Why a parameter model of its own, apart from the stages': it changes *where* the frames of
``infer``, ``refine`` and the evaluation's inference are computed, never *what* comes out (the
output is byte-identical to a one-process run: see :mod:`tasks.shard`), so it is in no stage key,
in no cache key and in no DVC ``params`` list. Every door takes it: ``params.yaml`` ``compute:``,
``rgb2thermal run --workers N`` / ``--dask-address tcp://host:8786``, ``rgb2thermal stage
infer|refine --workers/--dask-address``, and the Prefect flow's ``workers``/``dask_address``.

This module is light on purpose (pydantic only): ``pipeline.params`` imports it for every run, and
``distributed`` is imported (by :mod:`tasks.shard`) only when a stage actually shards.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from core.stage_params import StageParams

if TYPE_CHECKING:
    from tasks.shard import Shards


class ComputeParams(StageParams):
    """Where the per-image stages run.

    - ``workers``: 0 (default) = in this process, no Dask; N >= 1 = a local Dask cluster of N
      worker *processes* started for the run (each loads the stage's model once).
    - ``scheduler``: the address of a Dask scheduler the user runs (``tcp://host:8786``; started
      with ``dask scheduler`` + ``dask worker``, dask-jobqueue or dask-kubernetes); its workers must
      import this package and see the same files (images, checkpoints, the cache folder) at the same
      paths. Excludes ``workers``.
    - ``chunk_size``: frames per Dask task (rounded up to a multiple of the stage's batch size, so a
      cold run forms the same detector batches as one process). A lost worker costs at most the
      frames of its chunk that had not reached the cache.
    - ``threads_per_worker``: threads of each local worker process (torch threads stay at 1 per
      process: Dask's ``OMP_NUM_THREADS=1``).
    - ``retries``: times a chunk whose task *raised* is retried (a killed worker's chunk is
      rescheduled by the scheduler itself, up to Dask's ``allowed-failures``).
    """

    workers: int = Field(default=0, ge=0, le=1024)
    scheduler: str | None = None
    chunk_size: int = Field(default=64, ge=1)
    threads_per_worker: int = Field(default=1, ge=1, le=256)
    retries: int = Field(default=2, ge=0, le=20)

    @field_validator("scheduler")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError(f"a Dask scheduler address looks like tcp://host:8786, got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_place(self) -> ComputeParams:
        if self.scheduler is not None and self.workers:
            raise ValueError("give compute.workers (a local cluster) or compute.scheduler (your cluster), not both")
        return self

    @property
    def sharded(self) -> bool:
        """Whether the stages shard their frames over Dask (False: everything in this process)."""
        return self.scheduler is not None or self.workers > 0


#: What a stage accepts as ``compute``: parameters (a cluster for that call), a running
#: :class:`tasks.shard.Shards` (a cluster shared by several calls, e.g. one pipeline run), or None.
Compute = Any


def compute_overrides(workers: int | None, address: str | None, chunk_size: int | None = None) -> list[str]:
    """``--set``-style overrides for the CLI options ``--workers N`` / ``--dask-address ADDR`` / ``--chunk-size K``.

    Args:
        workers: local Dask worker processes, or None when the option was not given.
        address: a Dask scheduler address (``tcp://host:8786``), or None.
        chunk_size: frames per Dask task, or None.

    Returns:
        Dotted ``compute.*`` overrides for :func:`core.overrides.apply_overrides` (empty when neither is given).
    """
    out = [f"compute.workers={int(workers)}"] if workers is not None else []
    out += [f"compute.scheduler={address}"] if address is not None else []
    return out + ([f"compute.chunk_size={int(chunk_size)}"] if chunk_size is not None else [])


def open_shards(compute: ComputeParams | None) -> Shards | None:
    """A :class:`tasks.shard.Shards` for ``compute`` (its cluster starts on first use; the caller
    closes it), or None when ``compute`` keeps everything in this process."""
    if compute is None or not compute.sharded:
        return None
    from tasks.shard import Shards

    return Shards(compute)


@contextlib.contextmanager
def shard_session(compute: Compute) -> Iterator[Shards | None]:
    """The cluster a stage call shards on: ``compute`` itself when it is already a running
    :class:`tasks.shard.Shards` (left open: its owner closes it), a new one for
    :class:`ComputeParams` that ask for Dask (closed at the end of the block), else None."""
    if compute is None or not compute.sharded:
        yield None
        return
    if not isinstance(compute, ComputeParams):
        yield compute
        return
    shards = open_shards(compute)
    try:
        yield shards
    finally:
        if shards is not None:
            shards.close()
