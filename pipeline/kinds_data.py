"""The data kinds: ``data`` (each dataset root fingerprinted, or generated first) and ``index`` (the
paired index, paths relative to the workspace, and the splits cut from it).

Thin glue to the data layer (:mod:`data.fingerprint`, :mod:`data.synthetic_dataset`,
:mod:`data.relocate`, :mod:`data.splits`); called through :func:`pipeline.stages.run_kind`.
"""
from __future__ import annotations

from pathlib import Path

from core import atomic
from data.fingerprint import fingerprint_roots
from pipeline.step import PipelineContext, Step, StepOutput


def data_step(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Fingerprint each dataset root (generating it first for ``data.synthetic``). ``datasets.json``
    names each root by its place in the workspace (``datasets/<version>``, the link made at run
    start, or the generated folder), never by an outside path: its content keys every later step.

    Args:
        ctx: the run (``data`` parameters, the workspace, the hash memo).
        step: the ``data`` plan entry.
        out: the step's folder (the generated data set lies here).

    Returns:
        Files ``datasets`` (version -> ``path``, ``fingerprint``, ``content``) and, for generated
        data, ``registry`` (its homographies); info ``datasets``: version -> fingerprint.
    """
    d = ctx.params.data
    files: dict[str, Path] = {}
    if d.synthetic is not None:
        from data.synthetic_dataset import generate_dataset

        root, files["registry"] = generate_dataset(d.synthetic, out, d.classes)
        roots = {d.synthetic.version: (root, root)}
    else:       # (the folder itself: its content and its DVC pointer beside it; how the workspace reaches it)
        roots = {r.version: (r.path, ctx.dataset_root(r.version)) for r in d.roots}
    fps = fingerprint_roots({v: p for v, (p, _) in roots.items()}, ctx.memo)
    files["datasets"] = atomic.write_json(out / "datasets.json", {
        v: {"path": ctx.rel(roots[v][1], resolve=False), **fps[v]} for v in sorted(roots)})
    return StepOutput(files=files, info={"datasets": {v: f["fingerprint"] for v, f in fps.items()}})


def index_step(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Index the roots, paths relative to the workspace, and cut the splits (:mod:`data.splits`).

    Args:
        ctx: the run (``data`` parameters: classes, splits).
        step: the ``index`` plan entry (input role ``datasets``).
        out: the step's folder.

    Returns:
        Files ``index`` and one COCO file per split set (``rgb_adapt``, ``thermal_test``, ...);
        info ``counts``.
    """
    from core.coco import save_dataset
    from data.relocate import build_relative_index
    from data.splits import split_datasets

    roots = {v: info["path"] for v, info in atomic.read_json(ctx.input(step, "datasets")).items()}
    idx = build_relative_index(roots, ctx.workspace, out, ctx.params.data.classes)
    cut = split_datasets(idx, ctx.params.data)
    files = {"index": Path(str(idx.path)), **{k: save_dataset(out / f"{k}.json", ds) for k, ds in cut.datasets.items()}}
    return StepOutput(files=files, info={"counts": cut.counts})
