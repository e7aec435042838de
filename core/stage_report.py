"""The JSON report every label-transfer stage writes beside its COCO output.

Why: a stage's COCO output says *what* was produced; the report says *how* (inputs and
outputs with content hashes, parameters, the model that was used, how many boxes were kept
or dropped and why, cache hits, skipped images, fallbacks). The Prefect flow, DVC and the
quality report read it; a user reads it to see whether a run did what they asked. A
fallback that is not in ``fallbacks`` did not happen silently: it did not happen.

Each stage writes ``<out>.report.json`` (see :func:`report_path`) with :meth:`StageReport.save`,
atomically, so no reader ever sees half a report.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import atomic


def report_path(out: str | os.PathLike[str]) -> Path:
    """Where the report of a stage whose COCO output is ``out`` lives: ``<out>.report.json``."""
    out = Path(out)
    return out.with_name(out.name + ".report.json")


@dataclass
class StageReport:
    """What one stage run did. All counts are plain ints; ``seconds`` is wall-clock time.

    - ``inputs``/``outputs``: role -> path (str), e.g. ``{"coco": "/x/infer.json"}``.
    - ``params``: the stage's parameters as JSON-able values (what the user asked for).
    - ``counts``: e.g. ``{"images": 10, "boxes_in": 52, "boxes_out": 40}``.
    - ``dropped``: reason -> number of boxes dropped for that reason.
    - ``cache_hits``/``cache_misses``: per-image cache look-ups.
    - ``fallbacks``: one human-readable line per fallback taken (also logged at WARNING).
    - ``models``: role -> human-readable description of the model/weights used.
    - ``skipped_images``: ``{"image": path, "reason": ...}`` per image that could not be used.
    - ``compute``: how the frames were sharded over Dask (workers, chunks, per-chunk seconds,
      scheduler address: ``tasks.shard.Shards.run``); empty when the stage ran in one process.
    """

    stage: str
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    fallbacks: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    skipped_images: list[dict[str, Any]] = field(default_factory=list)
    compute: dict[str, Any] = field(default_factory=dict)

    def add_dropped(self, reason: str, n: int = 1) -> None:
        """Count ``n`` boxes dropped for ``reason`` (a short snake_case word)."""
        if n:
            self.dropped[reason] = int(self.dropped.get(reason, 0)) + int(n)

    def skip_image(self, image: str | os.PathLike[str], reason: str) -> None:
        """Record an image that could not be used (the run goes on without it)."""
        self.skipped_images.append({"image": str(image), "reason": str(reason)})

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically to ``path`` (use :func:`report_path` for the usual place)."""
        return atomic.write_text(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageReport:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StageReport:
        return cls.from_dict(atomic.read_json(path))


def _plain(obj: Any) -> Any:
    """Numpy scalars, tuples and paths -> plain JSON values (reports must always serialise)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj
