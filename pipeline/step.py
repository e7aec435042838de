"""The values a plan is made of: :class:`Step` (one step, declared in :mod:`pipeline.plan`),
:class:`Ref` (an upstream output it reads), :class:`StepOutput` (what a step produced) and
:class:`PipelineContext` (one run). Kept apart from the executor so that the step kinds
(:mod:`pipeline.stages`) and the executor can both import them at module level."""
from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.hashing import HashMemo
from pipeline.params import PipelineParams
from pipeline.runs import RunRecord

#: Workspace folder of the links to the dataset roots (see :meth:`PipelineContext.mount_datasets`).
DATASETS_DIR = "datasets"


@dataclass(frozen=True)
class Ref:
    """One output file of an earlier step: ``Ref("infer", "coco")``."""

    step: str
    role: str


@dataclass(frozen=True)
class Step:
    """One step of a plan: a value, so one kind can occur several times (``student@round2``).

    - ``name``: unique in the plan; its outputs go to ``stages/<name>/``.
    - ``kind``: which implementation runs it (:func:`pipeline.stages.run_kind`: a COCO stage of
      :data:`tasks.stage_specs.STAGE_SPECS`, or one of the pipeline's own :data:`pipeline.stages.KINDS`).
    - ``sections``: parameter sections of ``params.yaml`` in its key (and in ``dvc.yaml``).
    - ``needs``: role -> :class:`Ref`, the upstream outputs it reads (their content is keyed).
    - ``external``: role -> file or folder outside the workspace it reads (teacher checkpoint,
      homography registry, dataset roots); content keyed, and a DVC dependency.
    - ``options``: JSON-able instance parameters (which split, which model role), keyed.
    - ``retries``: Prefect retries for transient (I/O) failures; never for training.
    - ``resumable``: a killed attempt with the same key continues instead of restarting.
    """

    name: str
    kind: str
    sections: tuple[str, ...] = ()
    needs: Mapping[str, Ref] = field(default_factory=dict)
    external: Mapping[str, Path] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    resumable: bool = False

    def upstream(self) -> list[str]:
        """Names of the steps this one reads, in first-use order, without repeats."""
        return list(dict.fromkeys(r.step for r in self.needs.values()))


@dataclass
class StepOutput:
    """What a finished step produced: files by role (absolute paths) and facts for the record."""

    files: dict[str, Path]
    cache_hits: int = 0
    cache_misses: int = 0
    info: dict[str, Any] = field(default_factory=dict)   # JSON-able: models, counts, metrics, fallbacks
    reused: bool = False
    seconds: float = 0.0
    key: str = ""


@dataclass
class PipelineContext:
    """One run: parameters, workspace, the run record, and the outputs of the steps done so far."""

    params: PipelineParams
    workspace: Path
    record: RunRecord
    outputs: dict[str, StepOutput] = field(default_factory=dict)
    current: str = ""            # the step being executed (named in the record's error when it fails)
    memo: HashMemo = field(default_factory=HashMemo)   # file hashes by stat (see core.hashing)
    cache_root: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)   # guards the record (concurrent flow steps)
    #: the Dask cluster the per-image steps shard on (``tasks.shard.Shards``, started on first use and
    #: closed by ``pipeline_run``), or None: they run in this process (``params.compute``)
    compute: Any = None

    def stage_dir(self, name: str) -> Path:
        return self.workspace / "stages" / name

    def cache_dir(self, kind: str) -> Path:
        """Per-image cache of one stage kind; entries are keyed by content, so workspaces may share it."""
        return (self.cache_root or self.workspace / "cache") / kind

    def input(self, step: Step, role: str) -> Path:
        """The file ``step`` reads as ``role`` (an upstream output)."""
        ref = step.needs[role]
        try:
            return self.outputs[ref.step].files[ref.role]
        except KeyError:
            raise InputError(f"step '{ref.step}' has no output '{ref.role}' in this run", str(self.workspace),
                             f"run the steps before '{step.name}' first") from None

    @property
    def image_root(self) -> Path:
        """The folder every image path in a step's COCO files and index is relative to: the workspace
        (dataset roots are reached through :meth:`dataset_root`), so outputs hold no outside path."""
        return self.workspace

    def dataset_root(self, version: str) -> Path:
        """Where the workspace reaches the dataset root of ``version``: a link, made at run start
        (:meth:`mount_datasets`), to the folder ``data.roots`` names now."""
        return self.workspace / DATASETS_DIR / version

    def mount_datasets(self) -> None:
        """Point ``datasets/<version>`` at each ``data.roots`` folder (replacing a link to an old place).

        Why a link: the index names images through it, so a dataset folder moved with the same
        content needs only a new link, not a new index (whose content keys every later step).
        """
        for r in self.params.data.roots:
            link, target = self.dataset_root(r.version), Path(r.path).resolve()
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            if link.exists() and not link.is_symlink():
                raise InputError(f"{link} is not a link to a dataset root", str(link),
                                 "remove it: the pipeline links data.roots there at run start")
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{r.version}.{os.getpid()}.link")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target, target_is_directory=True)
            os.replace(tmp, link)

    def rel(self, path: str | os.PathLike[str], *, resolve: bool = True) -> str:
        """``path`` relative to the workspace when inside it (outputs stay valid after a move), else
        absolute. ``resolve=False`` keeps links (a path through :meth:`dataset_root` stays one)."""
        p = Path(path).resolve() if resolve else Path(os.path.abspath(path))
        try:
            return p.relative_to(self.workspace).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, path: str) -> Path:
        """Inverse of :meth:`rel`."""
        p = Path(path)
        return p if p.is_absolute() else self.workspace / p
