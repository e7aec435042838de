"""Guarded MMDetection training: ``train(spec) -> TrainResult``, a pure function of the spec.

Why guarded: a run that hits a NaN keeps "training" on garbage for hours; an empty dataset
"trains" fine; the best epoch is often 10 of 300. So:

- ``NonFiniteLossGuardHook`` stops at the first NaN/inf loss and raises
  ``NonFiniteLossError`` naming the iteration, the loss and the lr;
- datasets are checked before anything is built (``detection.train_config.check_dataset``);
- the best checkpoint by ``coco/bbox_mAP_50`` and the last one are kept; optional early
  stopping; ``resume=True`` continues from the work dir's last checkpoint;
- ``ProgressHook`` shows a tqdm bar with ETA; mmengine's logger still prints losses;
- ``best_slim.pth`` (state dict + class names) loads under torch's strict ``weights_only``.

The Runner is built in-process (``Runner.from_cfg``), or, with ``gpus``/``nnodes`` above 1, in
each process of a torchrun training (:mod:`tasks.train_dist`: DDP through mmengine's
``launcher='pytorch'``); the resolved config is written to ``work_dir/config.py`` and the result
(``processes`` and ``backend`` included) to ``work_dir/train_result.json``. The hooks are
in :mod:`tasks.train_hooks`, registered in mmengine's hook registry so ``config.py`` names them
and stays runnable with mmdet's own tools (``custom_imports: tasks.train_hooks``).
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core import atomic, hashing
from core.errors import InputError
from detection.train_spec import TrainSpec, training_identity
from tasks.train_hooks import ProgressHook

log = logging.getLogger(__name__)

INIT_WEIGHTS = "init_weights.pth"
SLIM_NAME = "best_slim.pth"


@dataclass
class TrainResult:
    """What a training run produced; also written to ``run_dir/train_result.json``."""

    run_dir: Path
    config_path: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    slim_checkpoint: Path | None
    metrics: dict[str, Any]          # best/last validation metrics + history per validation
    timings: dict[str, float]        # seconds: total, train_iter_median, ...
    weights: dict[str, Any]          # initial weights used (load_from, fingerprint, head transfer report)
    epochs_run: int
    stopped_early: bool
    test_predictions: Path | None = None
    warnings: list[str] = field(default_factory=list)
    processes: int = 1               # training processes (torchrun world size; 1: in this process)
    backend: str | None = None       # torch.distributed backend of several processes (gloo on CPU, nccl on CUDA)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


@dataclass
class RankRun:
    """What the training loop itself reports (in this process, or rank 0 of a torchrun training via
    ``rank0_run.json``): epochs reached, per-iteration seconds, validation history."""

    epochs_run: int
    iter_seconds: list[float]
    val_history: list[dict[str, Any]]
    processes: int = 1
    backend: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RankRun:
        return cls(**d)


def prepare_init_weights(spec: TrainSpec, cfg: Any) -> dict[str, Any]:
    """Write ``work_dir/init_weights.pth`` from ``spec.load_from`` with the class head transferred.

    The file is a slim state dict that loads under strict ``weights_only``; the Runner's
    ``load_from`` then loads it with every key matching (checked here, not warned about later).
    """
    import torch

    from core.compat import _plain
    from detection.detector import checkpoint_classes, read_checkpoint
    from detection.head_transfer import transfer_state_dict
    from detection.mmdet_utils import build_model

    assert spec.load_from is not None
    ckpt = read_checkpoint(spec.load_from)
    src_classes = checkpoint_classes(ckpt)
    warnings: list[str] = []
    if src_classes is None:
        from mmdet.datasets import CocoDataset

        coco = tuple(CocoDataset.METAINFO["classes"])
        n = next((v.shape[0] for k, v in ckpt["state_dict"].items() if "multi_level_conv_cls" in k), None)
        if n != len(coco):
            raise InputError("the checkpoint stores no class names (meta.dataset_meta.classes)", str(spec.load_from),
                             "use a checkpoint saved by mmdet/rgb2thermal, which records its classes")
        src_classes = coco
        warnings.append(f"{spec.load_from}: no class names stored; assumed the 80 COCO classes (head has 80 rows)")
        log.warning(warnings[-1])
    target_model = build_model(cfg.model)
    state, report = transfer_state_dict(ckpt["state_dict"], target_model.state_dict(), src_classes, spec.classes,
                                        mode=spec.head_init, class_map=spec.class_map)
    report.warnings.extend(warnings)
    path = Path(spec.work_dir) / INIT_WEIGHTS
    with atomic.atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": _plain({"dataset_meta": {"classes": list(spec.classes)},
                                                          "rgb2thermal": {"head_transfer": report.mode}})}, tmp)
    return {"load_from": str(spec.load_from), "load_from_sha256": hashing.file_sha256(spec.load_from),
            "init_weights": str(path), "head": report.to_dict()}


def _find_best(work_dir: Path) -> Path | None:
    found = sorted(work_dir.glob("best_coco_bbox_mAP_50_epoch_*.pth"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _find_last(work_dir: Path) -> Path | None:
    """The checkpoint mmengine's ``last_checkpoint`` names, taken by its *name* inside ``work_dir``.

    Why only the name: resume unpickles this file fully (``weights_only=False``), so it must be one
    this training wrote, never a path the marker text points to elsewhere (a planted or stale
    marker); and mmengine writes an absolute path, which a moved workspace would otherwise lose.
    """
    marker = work_dir / "last_checkpoint"
    if marker.is_file():
        text = marker.read_text().strip()
        p = work_dir / Path(text).name
        if text and p.is_file() and p.suffix == ".pth":
            if Path(text).resolve() != p.resolve():
                log.warning("last_checkpoint names %s; resuming from %s, the file of that name in %s",
                            text, p.name, work_dir)
            return p
    return None


def write_slim(checkpoint: Path, out: Path, extra_meta: dict[str, Any]) -> Path:
    """Save the inference-only copy of ``checkpoint`` (loads under ``weights_only=True``)."""
    import torch

    from core.compat import _plain, load_trusted_checkpoint, slim_checkpoint

    ck = load_trusted_checkpoint(checkpoint)
    ck.setdefault("meta", {})["rgb2thermal"] = extra_meta
    slim = slim_checkpoint(ck)
    slim["meta"] = _plain(slim["meta"])
    with atomic.atomic_path(out) as tmp:
        torch.save(slim, tmp)
    torch.load(out, map_location="cpu", weights_only=True)  # prove it loads under the strict default
    return out


def _fresh_mmengine_logger(work_dir: Path) -> None:
    """Make a new console-only MMLogger the *current* one before building anything.

    mmengine logs model initialisation to its current logger; after an earlier training in
    this process that is the finished Runner's logger, whose log file handler is closed, so a
    second training that builds a model for ``load_from`` fails in ``init_weights`` with
    ``AttributeError: 'NoneType' object has no attribute 'write'``.
    """
    import uuid

    from mmengine.logging import MMLogger

    MMLogger.get_instance(f"rgb2thermal-{Path(work_dir).name}-{uuid.uuid4().hex[:8]}", log_level="WARNING")


def _console_log_level() -> str:
    """mmengine's console level: its INFO stream (environment dump, the whole config, a line per
    50 iterations, ~700 lines per training) only when our caller logs at INFO or below (the CLI's
    ``-v``); otherwise WARNING, and the progress bar shows the training."""
    return "INFO" if logging.getLogger().getEffectiveLevel() <= logging.INFO else "WARNING"


def _log_file_at_info(runner: Any) -> None:
    """Keep the full INFO log (losses, lr, validation) in the run's log file whatever the console shows."""
    for h in runner.logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.setLevel(logging.INFO)


@contextlib.contextmanager
def _prints_to_file(path: Path, active: bool) -> Iterator[None]:
    """Send what third-party code ``print``s during training (pycocotools' 12-line AP summary and
    "loading annotations into memory..." at every validation) to ``path`` instead of the console,
    unless the caller asked for verbose output. Nothing is lost: the file keeps it."""
    if not active:
        yield
        return
    with open(path, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
        yield


@dataclass
class _Prepared:
    """What :func:`_prepare_run` built: ``config.py``, the Runner's twin of that config, the
    initial-weights record and the warnings so far."""

    config_path: Path
    runner_cfg: Any
    weights: dict[str, Any]
    warnings: list[str]


def train(spec: TrainSpec) -> TrainResult:
    """Train per ``spec`` and return what was produced (see module docstring).

    With ``spec.world_size`` (``gpus x nnodes``) above 1 the training loop runs under torchrun
    (:func:`tasks.train_dist.launch`, DDP); preparation and the record are the same as in-process.

    Raises ``InputError`` for unusable input (empty/unlabelled datasets, bad losses,
    unknown class mappings) before any training, and ``NonFiniteLossError`` at the first
    NaN/inf loss.
    """
    if spec.erase_ignored:
        import detection.transforms  # noqa: F401  (registers EraseIgnoredBoxes with mmdet's TRANSFORMS)

    _fresh_mmengine_logger(spec.work_dir)
    t_start = time.perf_counter()
    work_dir = Path(spec.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    prep = _prepare_run(spec, work_dir)
    t_build = time.perf_counter()
    if spec.world_size > 1:
        from tasks.train_dist import launch

        ran = launch(spec, prep.config_path, work_dir, device=prep.runner_cfg.rgb2thermal.device,
                     log_level=prep.runner_cfg.log_level)
    else:
        runner, progress = _run(prep.runner_cfg, work_dir)
        ran = RankRun(int(runner.epoch), progress.iter_seconds, progress.val_history)
    t_train = time.perf_counter()
    result = _record(spec, work_dir, prep, ran)
    iters = ran.iter_seconds
    result.timings = {"total_s": round(time.perf_counter() - t_start, 3), "build_s": round(t_build - t_start, 3),
                      "train_loop_s": round(t_train - t_build, 3), "iterations": len(iters),
                      "train_iter_median_s": round(statistics.median(iters[1:] or iters), 4) if iters else None,
                      "train_iter_first_s": round(iters[0], 4) if iters else None}
    if spec.test is not None and result.slim_checkpoint is not None:
        result.test_predictions = _predict_test(spec, prep.config_path, result.slim_checkpoint, work_dir)
    atomic.write_json(work_dir / "train_result.json", result.to_json())
    return result


def _prepare_run(spec: TrainSpec, work_dir: Path) -> _Prepared:
    """Build the config, prepare the initial weights or find the checkpoint to resume from, write
    ``config.py``.

    Which files are unpickled fully: only the checkpoint a resume continues from (this training's
    own ``epoch_N.pth``, found by :func:`_find_last`), named to mmengine as
    ``rgb2thermal-trusted://<path>`` (:func:`tasks.train_hooks.trusted_checkpoint_uri`). The initial
    weights (``init_weights.pth``) are slim and load through mmengine's plain loader under torch's
    strict ``weights_only`` default, like any other file.
    """
    from mmengine.config import Config

    from detection.train_config import build_config
    from tasks.train_hooks import trusted_checkpoint_uri

    cfg = build_config(spec)
    warnings: list[str] = []
    if spec.val is None:
        warnings.append("no validation set: the best checkpoint is chosen on the TRAINING set")
        log.warning(warnings[-1])
    weights: dict[str, Any] = {"load_from": None, "head": None, "init": "random (base config init)"}
    last = _find_last(work_dir)
    resuming = spec.resume and last is not None
    if spec.resume and last is None:
        warnings.append(f"resume requested but {work_dir} has no last checkpoint: starting from scratch")
        log.warning(warnings[-1])
    if spec.load_from is not None:
        weights = prepare_init_weights(spec, cfg)
        weights["init"] = "load_from"
        if not resuming:
            cfg.load_from = weights["init_weights"]
    if resuming:
        assert last is not None
        cfg.resume = True
        cfg.load_from = trusted_checkpoint_uri(last)
        weights["resumed_from"] = str(last)
    config_path = atomic.write_text(work_dir / "config.py", cfg.pretty_text)
    # mmengine re-renders the config text on every checkpoint save and at start-up; with yapf
    # formatting that costs ~0.5-1.5 s each on CPU, so the Runner gets an unformatted twin.
    runner_cfg = Config(cfg.to_dict(), format_python_code=False)
    runner_cfg.log_level = _console_log_level()
    return _Prepared(config_path=config_path, runner_cfg=runner_cfg, weights=weights, warnings=warnings)


def _run(runner_cfg: Any, work_dir: Path) -> tuple[Any, ProgressHook]:
    """Build the Runner from ``runner_cfg`` and train; returns the finished Runner and its ProgressHook."""
    from mmengine.runner import Runner

    with _prints_to_file(work_dir / "prints.log", runner_cfg.log_level != "INFO"):
        runner = Runner.from_cfg(runner_cfg)
        _log_file_at_info(runner)
        progress = next(h for h in runner.hooks if isinstance(h, ProgressHook))
        runner.train()
    return runner, progress


def _record(spec: TrainSpec, work_dir: Path, prep: _Prepared, ran: RankRun) -> TrainResult:
    """Pick the best (else the last) checkpoint, write its slim copy, and gather the result
    (``timings`` are filled in by the caller)."""
    from detection.train_config import BEST_METRIC

    warnings = list(prep.warnings)
    best = _find_best(work_dir)
    last = _find_last(work_dir)
    history = ran.val_history
    epochs_run = ran.epochs_run
    best_entry = max(history, key=lambda h: h.get(BEST_METRIC, -1.0), default=None)
    slim = None
    chosen = best or last
    if best is None and last is not None:
        warnings.append(f"no best checkpoint by {BEST_METRIC} (validation never produced a metric, e.g. no "
                        f"detections above the score threshold): {SLIM_NAME} holds the LAST checkpoint")
        log.warning(warnings[-1])
    if chosen is not None:
        slim = write_slim(chosen, work_dir / SLIM_NAME,
                          {"classes": list(spec.classes), "config": "config.py", "source": chosen.name,
                           "spec_sha256": _spec_identity(spec)})
    return TrainResult(run_dir=work_dir, config_path=prep.config_path, best_checkpoint=best, last_checkpoint=last,
                       slim_checkpoint=slim,
                       metrics={"best_metric": BEST_METRIC, "best": best_entry,
                                "last": history[-1] if history else None, "history": history},
                       timings={}, weights=prep.weights, epochs_run=epochs_run, stopped_early=epochs_run < spec.epochs,
                       warnings=warnings, processes=ran.processes, backend=ran.backend)


def _spec_identity(spec: TrainSpec) -> str:
    """Hash of what the training was: its settings and the *content* of its label files, not the
    paths of its work dir or datasets (a checkpoint must not change because a workspace moved)."""
    d = training_identity(spec.model_dump(mode="json"))   # not the rendezvous, nor process counts of 1
    for role in ("train", "val", "test"):
        ds = getattr(spec, role)
        d[role] = None if ds is None else hashing.file_sha256(ds.ann_file)
    d["load_from"] = hashing.file_sha256(spec.load_from) if spec.load_from is not None else None
    d.pop("work_dir", None)
    # how this attempt started, not what was trained: a resumed run's weights equal an uninterrupted one's
    d.pop("resume", None)
    return hashing.json_sha256(d)


def _predict_test(spec: TrainSpec, config_path: Path, slim: Path, work_dir: Path) -> Path:
    """Predict on the test set with the best model through the infer stage (``tasks.infer``, the
    one path that runs a detector over frames; per-image cache under ``<work_dir>/cache/infer``, the
    config's test size, the stage's default score floor); write COCO results and the eval table.

    Training itself reads frames with mmdet's ``LoadImageFromFile``, not ``core.images``: for the
    8-bit BGR and gray files the pipeline writes both decode to the same pixels (``to_bgr_u8`` of
    an 8-bit file is what ``cv2.IMREAD_COLOR`` gives), so a model is trained and scored on the same
    input; 16-bit frames would differ (OpenCV's colour read divides them by 256, ``core.images``
    stretches them between their 0.5/99.5 percentiles).
    """
    from tasks.evaluate import evaluate_runs, write_report
    from tasks.infer import InferParams, infer_results

    assert spec.test is not None
    params = InferParams.validated({"config": str(config_path), "checkpoint": str(slim), "device": spec.device,
                                    "batch_size": spec.batch_size, "source": "thermal_student"}, "test predictions")
    results, _ = infer_results(Path(spec.test.ann_file), work_dir / "infer_test.json", params,
                               cache_dir=work_dir / "cache" / "infer", image_root=Path(spec.test.img_root))
    out = atomic.write_json(work_dir / "predictions_test.json", results)
    report = evaluate_runs(spec.test.ann_file, {work_dir.name: out})
    write_report(report, work_dir / "eval_test")
    return out
