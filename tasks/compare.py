"""The adaptation table: every model side by side per class and day/night, the gap closed, a plot per round.

Why: "the student got 0.5 mAP" says nothing on its own. What a user decides on is how far
adaptation went between *not adapting* (the teacher run on thermal: ``source_only``) and the
best that the adapt frames allow (a student trained on their thermal labels: ``oracle``, an
upper bound that exists only when those labels do), and whether it holds at night, where RGB
sees least. So each model is scored on the thermal test split as a whole and on its ``day`` and
``night`` images (the ``daynight`` key of each COCO image, from ``split.csv`` or the index), and

    gap closed = (model − source_only) / (oracle − source_only)      per class and group

(0 = no better than not adapting, 1 = as good as the oracle, negative = worse than not
adapting; undefined — ``None``, shown as ``—`` — when a term is missing or the oracle is not
above source-only, because then there is no gap to close).

Scores come from :func:`tasks.evaluate.evaluate` (pycocotools COCOeval), so the ``all`` group
equals the main evaluation table. Predictions are COCO results (``xywh`` pixels of the thermal
frame, with ``score``); boxes are not converted here.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import atomic
from tasks.evaluate import DASH, evaluate, evaluate_runs, format_markdown
from tasks.evaluate import _fmt as _fmt_digits

if TYPE_CHECKING:
    from core.hashing import HashMemo
    from tasks.compute import Compute
    from tasks.infer import InferParams

ALL = "all"
SOURCE_ONLY = "source_only"
ORACLE = "oracle"
#: grouped[model][group][category or "all"][metric] -> value in [0, 1] or None
Grouped = dict[str, dict[str, dict[str, dict[str, float | None]]]]


def split_groups(gt: dict, key: str = "daynight") -> dict[str, dict]:
    """``{group: COCO subset}`` for each value of ``images[*][key]`` present (``day``, ``night``),
    plus ``all`` (the whole set). Images without the key are only in ``all``."""
    groups: dict[str, list[dict]] = {}
    for im in gt["images"]:
        value = im.get(key)
        if value:
            groups.setdefault(str(value), []).append(im)
    out = {ALL: gt}
    for name in sorted(groups):
        ids = {im["id"] for im in groups[name]}
        out[name] = {**gt, "images": groups[name], "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    return out


def evaluate_grouped(gt: dict, predictions: Mapping[str, list[dict]]) -> Grouped:
    """Score each model's results on every group of :func:`split_groups` (per category + ``all``)."""
    groups = split_groups(gt)
    out: Grouped = {}
    for name, results in predictions.items():
        out[name] = {}
        for g, subset in groups.items():
            ids = {im["id"] for im in subset["images"]}
            r = evaluate(subset, [d for d in results if d["image_id"] in ids], name=name)
            out[name][g] = {**r.per_category, ALL: r.overall}
    return out


def gap_closed(value: float | None, source_only: float | None, oracle: float | None) -> float | None:
    """``(value − source_only) / (oracle − source_only)``; None when undefined (see module docstring)."""
    if value is None or source_only is None or oracle is None:
        return None
    if any(math.isnan(x) for x in (value, source_only, oracle)) or oracle - source_only <= 1e-9:
        return None
    return round((value - source_only) / (oracle - source_only), 4)


def gap_table(grouped: Grouped, metric: str = "mAP_50") -> dict[str, dict[str, dict[str, float | None]]]:
    """``{model: {group: {category: gap closed}}}`` for every model but the two references;
    empty when the run has no source-only or no oracle column."""
    if SOURCE_ONLY not in grouped or ORACLE not in grouped:
        return {}
    src, orc = grouped[SOURCE_ONLY], grouped[ORACLE]
    return {name: {g: {c: gap_closed(vals[metric], src[g][c][metric], orc[g][c][metric]) for c, vals in per.items()}
                   for g, per in groups.items()}
            for name, groups in grouped.items() if name not in (SOURCE_ONLY, ORACLE)}


def _fmt(v: float | None) -> str:
    return _fmt_digits(v, 3)           # the main table's formatting, so both tables read the same


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.0f} %"


def comparison_markdown(grouped: Grouped, metric: str = "mAP_50", order: Sequence[str] | None = None,
                        describe: Mapping[str, str] | None = None, sizes: Mapping[str, int] | None = None) -> str:
    """One row per model: ``metric`` per class x (day, night, all), then the gap closed per class (all images).

    ``describe``: optional words per model name (what it was trained on), shown in the row label;
    ``sizes``: images per group, for the caption.
    """
    names = list(order or grouped)
    first = grouped[names[0]]
    groups = [g for g in first if g != ALL] + [ALL]
    cats = [c for c in first[ALL] if c != ALL] + [ALL]
    gaps = gap_table(grouped, metric)
    head = ["model"] + [f"{c} {g}" for c in cats for g in groups]
    if gaps:
        head += [f"gap closed {c}" for c in cats if c != ALL]
    caption = f"{metric} on the thermal test split, per class and day/night"
    if sizes:
        caption += " (images: " + ", ".join(f"{g} {sizes[g]}" for g in groups if g in sizes) + ")"
    lines = [caption + ".", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in names:
        label = name + (" (upper bound)" if name == ORACLE else "")
        if describe and describe.get(name):
            label += f": {describe[name]}"
        cells = [_fmt(grouped[name][g][c][metric]) for c in cats for g in groups]
        if gaps:
            cells += [_pct(gaps.get(name, {}).get(ALL, {}).get(c)) if name in gaps else ""
                      for c in cats if c != ALL]
        lines.append("| " + " | ".join([label] + cells) + " |")
    if gaps:
        lines += ["", "gap closed = (model − source_only) / (oracle − source_only) on all test images: 0 % = no better "
                  "than not adapting, 100 % = as good as training on the adapt frames' thermal labels."]
    elif SOURCE_ONLY in grouped:
        lines += ["", "No oracle column (not in eval.baselines, or the adapt split has no thermal labels): "
                  "the gap closed cannot be computed."]
    return "\n".join(lines) + "\n"


def plot_rounds(grouped: Grouped, rounds: Sequence[str], out: Path, metric: str = "mAP_50") -> Path:
    """PNG: ``metric`` (all test images) per self-training round and class, with the source-only
    (dashed) and oracle (dotted) levels of each class as horizontal lines. ``rounds``: the model
    names in round order (e.g. ``["round1", "adapted"]``)."""
    import matplotlib

    matplotlib.use("Agg")                      # no display; never a GUI backend in a pipeline
    import matplotlib.pyplot as plt

    cats = [c for c in grouped[rounds[0]][ALL] if c != ALL]
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    xs = list(range(1, len(rounds) + 1))
    for i, c in enumerate(cats):
        colour = f"C{i}"
        ys = [grouped[r][ALL][c][metric] for r in rounds]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", color=colour, label=c)
        for ref, style in ((SOURCE_ONLY, "--"), (ORACLE, ":")):
            v = grouped.get(ref, {}).get(ALL, {}).get(c, {}).get(metric)
            if v is not None:
                ax.axhline(v, color=colour, linestyle=style, linewidth=1, label=f"{c} {ref.replace('_', '-')}")
    ax.set_xticks(xs, [f"{k}\n({r})" for k, r in zip(xs, rounds)])
    ax.set_xlabel("self-training round")
    ax.set_ylabel(f"{metric} (thermal test)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    with atomic.atomic_path(Path(out)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)


def comparison_json(grouped: Grouped, metric: str = "mAP_50") -> dict[str, Any]:
    return {"metric_for_gap": metric, "by_group": grouped, "gap_closed": gap_table(grouped, metric)}


def comparison_section(gt_ds: dict, predictions: Mapping[str, list[dict]], columns: Sequence[str], out: Path,
                       describe: Mapping[str, str] | None = None) -> tuple[str, dict[str, Path]]:
    """The adaptation table (mAP_50 per class and day/night, gap closed) as Markdown, its JSON file
    ``<out>/comparison.json`` and, when an ``adapted`` model is present, the per-round plot
    ``<out>/rounds.png`` (rounds: the ``round<k>`` columns in ``columns`` order, then ``adapted``)."""
    grouped = evaluate_grouped(gt_ds, predictions)
    sizes = {g: len(ds["images"]) for g, ds in split_groups(gt_ds).items()}
    md = comparison_markdown(grouped, "mAP_50", describe=describe, sizes=sizes)
    files = {"comparison": atomic.write_json(out / "comparison.json", comparison_json(grouped, "mAP_50"))}
    if "adapted" in grouped:
        rounds = [c for c in columns if c.startswith("round") and c in grouped] + ["adapted"]
        files["rounds_plot"] = plot_rounds(grouped, rounds, out / "rounds.png", "mAP_50")
        md += "\n![mAP_50 per self-training round](rounds.png)\n"
    return md, files


def inference_markdown(conditions: Mapping[str, Mapping[str, Any]]) -> str:
    """One Markdown paragraph saying how each model was run: its test input size (``[w, h]`` pixels,
    the size it is used at for pseudo-labelling), TTA views, the score floor and frames skipped.

    ``conditions``: per model, an infer-stage report's ``params`` plus ``skipped`` (frames that could
    not be read: they have no detections, so their ground-truth boxes count as misses)."""
    def one(name: str, c: Mapping[str, Any]) -> str:
        size = c.get("test_size")
        views = [*c.get("tta", []), *(f"{w}x{h}" for w, h in c.get("tta_sizes", []))]
        text = f"{name} {size[0]}x{size[1]}" if size else f"{name} (config's size)"
        text += f" + TTA {', '.join(views)}" if views else ""
        return text + (f", {c['skipped']} frame(s) unreadable" if c.get("skipped") else "")

    if not conditions:
        return ""
    floor = {(c.get("min_score"), c.get("max_per_image")) for c in conditions.values()}
    floors = "; ".join(f"score >= {s}, at most {m} per frame" for s, m in sorted(floor, key=str))
    return ("Test input (w x h px, the size each model pseudo-labels at): "
            + "; ".join(one(n, c) for n, c in conditions.items()) + f". Detections kept: {floors}.\n")


def decisions_sentence(*, on_val: bool, n_frames: int, val_how: str | None, rounds: int) -> str:
    """One sentence for the report and the record: what a run's decisions were made on.

    Args:
        on_val: these scores are on the val split (the ones decisions read).
        n_frames: frames of the scored split.
        val_how: how the run's val split is made (e.g. ``data.val_fraction=0.2 of the adapt pairs``),
            None when the run has none.
        rounds: the run's self-training rounds (fixed when there is no val split).
    """
    if on_val:
        return (f"Scored on the **val** split ({n_frames} frames with thermal labels): best checkpoints, sweeps and "
                "nightly promotion decide on these numbers.")
    if val_how is not None:
        return (f"Decisions (best checkpoints, sweeps, nightly promotion) were made on the val split ({val_how}); "
                f"the test split ({n_frames} frames) is only reported.")
    return (f"No val split: each student's best checkpoint was chosen on its own training labels, self-training ran "
            f"the fixed {rounds} round(s) of params.yaml, and nothing was decided on the test "
            f"split ({n_frames} frames). Set data.val_fraction to decide on held-out thermal labels.")


@dataclass
class ModelsEvaluation:
    """What :func:`evaluate_models` wrote and measured.

    ``files``: role -> path (``json``, ``metrics``, ``comparison``, ``rounds_plot``, ``table``);
    ``metrics``: ``{model: {category or "all": {metric: value in [0, 1] or None}}}``;
    ``markdown``: the whole report (main table, test conditions, adaptation table, decisions)."""

    files: dict[str, Path]
    metrics: dict[str, Any]
    markdown: str


def evaluate_models(gt: Path, predictions: Mapping[str, Path], out: Path, metrics: Sequence[str], *,
                    columns: Sequence[str], conditions: Mapping[str, Mapping[str, Any]] | None = None,
                    describe: Mapping[str, str] | None = None, decisions: str = "") -> ModelsEvaluation:
    """Score every model's COCO results file on ground truth ``gt`` and write the evaluation under ``out``.

    Args:
        gt: COCO ground truth (boxes ``xywh`` pixels).
        predictions: model name -> COCO results file for ``gt``'s images and categories.
        out: folder for ``eval.json`` (every value), ``metrics.json`` (``metrics`` only),
            ``comparison.json``/``rounds.png`` and ``eval.md``.
        metrics: names of :data:`tasks.evaluate.METRICS` shown in the main table and ``metrics.json``.
        columns: the models in table order (for the per-round plot).
        conditions: per model, how it was run (:func:`inference_markdown`), stated under the table.
        describe: per model, what it was trained on (row labels of the adaptation table).
        decisions: one sentence on what the run's decisions were made on, appended.
    """
    report = evaluate_runs(gt, dict(predictions))
    per = {r.name: {**r.per_category, "all": r.overall} for r in report.runs}
    files = {"json": atomic.write_json(out / "eval.json", report.to_json()),
             "metrics": atomic.write_json(out / "metrics.json", {
                 name: {cat: {m: vals.get(m) for m in metrics} for cat, vals in p.items()} for name, p in per.items()})}
    md = format_markdown(report, metrics) + "\n" + inference_markdown(conditions or {})
    comparison, extra = comparison_section(atomic.read_json(gt), {k: atomic.read_json(v) for k, v in predictions.items()},
                                           columns, out, describe)
    files.update(extra)
    md += "\n" + comparison + (f"\n{decisions}\n" if decisions else "")
    files["table"] = atomic.write_text(out / "eval.md", md)
    return ModelsEvaluation(files=files, metrics=per, markdown=md)


@dataclass
class ColumnsEvaluation:
    """What :func:`evaluate_columns` did: the evaluation, each column's COCO results file and how it
    was run (its infer parameters + ``skipped`` frames), the infer runs' cache look-ups and fallbacks."""

    evaluation: ModelsEvaluation
    predictions: dict[str, Path]
    conditions: dict[str, dict[str, Any]]
    cache_hits: int
    cache_misses: int
    fallbacks: list[str]


def evaluate_columns(gt: Path, params: Mapping[str, InferParams], out: Path, metrics: Sequence[str], *,
                     columns: Sequence[str], cache_dir: Path, hash_memo: HashMemo | None = None,
                     image_root: Path | None = None, describe: Mapping[str, str] | None = None,
                     decisions: str = "", compute: Compute = None) -> ColumnsEvaluation:
    """Run every model through the infer stage on ``gt``'s frames and score them side by side.

    One inference path: each model runs as it pseudo-labels (:func:`tasks.infer.infer_results`, same
    cache ``cache_dir``, so an unchanged model on unchanged frames is all cache hits), then
    :func:`evaluate_models` scores the results.

    Args:
        gt: COCO ground truth (boxes ``xywh`` pixels; ``file_name`` resolved against ``image_root``).
        params: column name -> the infer parameters of that model (config, checkpoint, test size, ...).
        out: folder for ``infer_<column>.json`` (+ its report), ``predictions_<column>.json`` (COCO
            results, ``xywh`` pixels) and the evaluation files of :func:`evaluate_models`.
        metrics: names of :data:`tasks.evaluate.METRICS` for the main table (:func:`evaluate_models`).
        columns: every model column in table order, including any left out of ``params``.
        cache_dir: the infer stage's per-image cache (shared with pseudo-labelling).
        hash_memo: avoids re-hashing unchanged frames (:class:`core.hashing.HashMemo`).
        image_root: the folder ``gt``'s relative ``file_name``s are relative to.
        describe: per column, what its model was trained on (table rows).
        decisions: one sentence on what this run's decisions were made on.
        compute: where the columns' frames are inferred (:class:`tasks.compute.ComputeParams` or a
            running :class:`tasks.shard.Shards`); one Dask cluster serves every column.

    Returns:
        A :class:`ColumnsEvaluation`; its ``fallbacks`` add one line per column with unreadable
        frames (scored as misses, never silently left out).
    """
    from tasks.compute import shard_session
    from tasks.infer import infer_results

    preds: dict[str, Path] = {}
    conditions: dict[str, dict[str, Any]] = {}
    reports = []
    with shard_session(compute) as shards:
        for column, p in params.items():
            results, rep = infer_results(gt, out / f"infer_{column}.json", p, cache_dir=cache_dir, hash_memo=hash_memo,
                                         image_root=image_root, compute=shards)
            preds[column] = atomic.write_json(out / f"predictions_{column}.json", results, indent=None)
            conditions[column] = {**rep.params, "skipped": len(rep.skipped_images)}
            reports.append(rep)
    ev = evaluate_models(gt, preds, out, metrics, columns=columns, conditions=conditions, describe=describe,
                         decisions=decisions)
    skipped = [f"{c}: {n['skipped']} test frame(s) could not be read: scored as misses (see infer_{c}.json.report.json)"
               for c, n in conditions.items() if n["skipped"]]
    return ColumnsEvaluation(ev, preds, conditions, cache_hits=sum(r.cache_hits for r in reports),
                             cache_misses=sum(r.cache_misses for r in reports),
                             fallbacks=list(dict.fromkeys(f for r in reports for f in r.fallbacks)) + skipped)
