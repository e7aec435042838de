"""What people look at after a sweep: the trials table, the best trial, and Optuna's plots.

Values are COCO mAP fractions in [0, 1]; ``val`` is what decided (the objective and pruning),
``test`` is reported beside it and never read for a decision.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One JSON-able row per trial: number, state, val objective, per-class val/test mAP_50, seconds, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "val": t.user_attrs.get("val"), "test": t.user_attrs.get("test"),
                     "seconds": t.user_attrs.get("seconds"), "params": dict(t.params),
                     "pruned_at_epoch": t.last_step if t.state.name == "PRUNED" else None,
                     "error": t.user_attrs.get("error"), "run_id": t.user_attrs.get("run_id"),
                     "workspace": t.user_attrs.get("workspace")})
    return rows


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "—"


def format_table(rows: list[dict[str, Any]], objective: str, classes: list[str]) -> str:
    """Markdown: the best trial, then every trial (params, val objective, test mAP_50 per class, time, state)."""
    keys = sorted({k for r in rows for k in r["params"]})
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best = max(done, key=lambda r: r["value"]) if done else None
    lines = []
    if best is None:
        lines.append("No complete trial yet.")
    else:
        lines.append(f"Best: trial {best['number']}, val {objective} = {best['value']:.4f}; "
                     f"test mAP_50 (reported only) " + ", ".join(f"{c} {_f((best['test'] or {}).get(c))}"
                                                                for c in [*classes, "all"]))
        lines.append("Params: " + ", ".join(f"`{k}={best['params'][k]!r}`" for k in keys if k in best["params"]))
    head = ["trial", "state", f"val {objective}", *[f"test {c}" for c in classes], "s", *keys]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["number"]) + (" **best**" if best is not None and r["number"] == best["number"] else ""),
                 r["state"].lower() + (f" @ epoch {r['pruned_at_epoch']}" if r.get("pruned_at_epoch") else ""),
                 _f(r["value"]), *[_f((r["test"] or {}).get(c)) for c in classes],
                 f"{r['seconds']:.0f}" if isinstance(r["seconds"], (int, float)) else "—",
                 *[_fmt_param(r["params"].get(k)) for k in keys]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def write_plots(study: Any, folder: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as PNGs in ``folder``; returns {name: path or why not}.

    A plot that cannot be drawn yet (e.g. importances need two complete trials with different
    values) is skipped with the reason logged and returned, never silently.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    from core import atomic

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # "experimental" warnings of the matplotlib backend
                if name == "param_importances":
                    from optuna.importance import PedAnovaImportanceEvaluator

                    # PED-ANOVA needs no scikit-learn (fANOVA, the default, does; it is not installed)
                    ax = ovm.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
                else:
                    ax = getattr(ovm, f"plot_{name}")(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            with atomic.atomic_path(folder / f"{name}.png") as tmp:
                fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
            plt.close(fig)
            out[name] = str(folder / f"{name}.png")
        except Exception as exc:     # a plot is a view: a sweep never fails for one
            out[name] = f"not drawn: {type(exc).__name__}: {exc}"
            log.warning("sweep plot %s %s", name, out[name])
            plt.close("all")
    return out
