"""TrainSpec -> a fully resolved MMDetection config (no hand-edited configs).

Why generated: the config that produced a number must sit next to that number. The base
model's ``model`` section is taken from the mmdet config (bundled or user file); everything
around it (datasets, pipelines, schedule, hooks) is written here from the spec, so it is
simple and robust for small data:

- plain ``CocoDataset`` (no Mosaic/MixUp, so no ``YOLOXModeSwitchHook``, which breaks
  without a ``MultiImageMixDataset`` and misbehaves when ``max_epochs`` < 15),
- optional ``RandomAffine`` (border 0, scale 0.5-1.5) / ``RandomFlip`` / HSV jitter,
- keep-ratio resize to ``input_size`` (``(width, height)`` pixels) and padding with 114,
- no multi-scale ``BatchSyncRandomResize`` (its 480-800 px range assumes 640 px COCO input),
- lr schedule in iterations (warmup, then cosine/step/constant), so fractional warmup epochs work,
- best checkpoint by ``coco/bbox_mAP_50``, the last one kept for resume.

Datasets are checked here too (empty, no boxes, class order), because mmdet would otherwise
train on nothing or silently swap class labels.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.coco import load_dataset, refuse_escaping_file_names
from core.errors import InputError
from detection.train_spec import LOSS_SLOTS, DatasetSpec, TrainSpec

log = logging.getLogger(__name__)

BEST_METRIC = "coco/bbox_mAP_50"
PAD_VALUE = 114


@dataclass(frozen=True)
class DatasetStats:
    """What a COCO dataset holds for the target classes (checked before training)."""

    role: str
    ann_file: str
    n_images: int
    n_boxes: dict[str, int]
    n_images_without_boxes: int
    warnings: list[str] = field(default_factory=list)


def check_dataset(ds_spec: DatasetSpec, classes: list[str], role: str, require_boxes: bool = True) -> DatasetStats:
    """Refuse datasets that would train or validate on nothing, or map classes wrongly.

    - no images, or no boxes of the target classes -> ``InputError`` (training on an empty
      set "succeeds" and produces a useless model);
    - a target class missing from ``categories`` -> ``InputError`` listing the categories;
    - target categories listed in a different order than ``classes`` -> ``InputError``
      (mmdet's ``CocoDataset`` numbers labels in the file's category order, not in
      ``metainfo.classes`` order, which silently swaps person and car);
    - missing image files -> ``InputError`` naming the first few.
    """
    path = str(ds_spec.ann_file)
    ds = load_dataset(ds_spec.ann_file)
    if not ds["images"]:
        raise InputError(f"the {role} set has no images", path, f"point {role}.ann_file at a non-empty COCO file")
    names = [c["name"] for c in ds["categories"]]
    missing = [c for c in classes if c not in names]
    if missing:
        raise InputError(f"target classes {missing} are not categories of the {role} set (it has {names})", path,
                         "rename categories to the target class names or change `classes`")
    order = [n for n in names if n in classes]
    if order != list(classes):
        raise InputError(f"the {role} set lists the target categories in the order {order}, not {list(classes)}; "
                         "mmdet would number labels in file order and swap classes", path,
                         f"order `classes` as {order} or reorder the file's categories")
    name_of = {c["id"]: c["name"] for c in ds["categories"]}
    counts = {c: 0 for c in classes}
    with_boxes: set[int] = set()
    for a in ds["annotations"]:
        n = name_of[a["category_id"]]
        if n in counts and not a.get("iscrowd", 0):
            counts[n] += 1
            with_boxes.add(a["image_id"])
    if require_boxes and sum(counts.values()) == 0:
        raise InputError(f"the {role} set has {len(ds['images'])} images but no boxes of {list(classes)}", path,
                         "label the images (or check the category names) before training")
    root = Path(ds_spec.img_root)
    refuse_escaping_file_names(ds, root, path)
    absent = [im["file_name"] for im in ds["images"] if not (root / im["file_name"]).is_file()]
    if absent:
        raise InputError(f"{len(absent)} image files of the {role} set are missing, e.g. {absent[:3]}", str(root),
                         f"set {role}.img_root to the folder that file_name is relative to")
    warnings = [f"{role}: class '{c}' has no boxes" for c, n in counts.items() if n == 0]
    for w in warnings:
        log.warning(w)
    return DatasetStats(role=role, ann_file=path, n_images=len(ds["images"]), n_boxes=counts,
                        n_images_without_boxes=len(ds["images"]) - len(with_boxes), warnings=warnings)


def _loss_cfg(slot: str, base: dict, override: dict) -> dict:
    """Merge a loss override into YOLOX's slot: keep its weight unless given; sum reduction."""
    from mmdet.registry import MODELS

    kwargs = dict(override)
    cfg: dict[str, Any] = {"type": kwargs.pop("type")}
    if slot in ("loss_cls", "loss_obj"):
        cfg["use_sigmoid"] = True
    cfg["reduction"] = "sum"
    cfg["loss_weight"] = base.get("loss_weight", 1.0)
    if slot == "loss_bbox" and cfg["type"] == "IoULoss":
        cfg["mode"] = base.get("mode", "square")
    cfg.update(kwargs)
    try:
        MODELS.build(copy.deepcopy(cfg))
    except KeyError as exc:
        registered = sorted(k for k in MODELS.module_dict if k.endswith("Loss"))
        raise InputError(f"loss type '{cfg['type']}' is not registered in mmdet ({exc})", f"losses.{slot}",
                         f"use one of {registered}") from None
    except (TypeError, ValueError, AssertionError) as exc:
        raise InputError(f"invalid arguments for {cfg['type']}: {exc}", f"losses.{slot}",
                         "use the loss's documented keyword arguments (e.g. FocalLoss: gamma, alpha)") from None
    return cfg


def _pipelines(spec: TrainSpec) -> tuple[list[dict], list[dict]]:
    size = tuple(spec.input_size)  # (width, height), as mmdet's Resize/Pad expect
    pad = dict(type="Pad", size=size, pad_val=dict(img=(PAD_VALUE,) * 3))
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True)]
    if spec.erase_ignored:
        train.append(dict(type="EraseIgnoredBoxes", fill=PAD_VALUE))
    if "affine" in spec.augment:
        train.append(dict(type="RandomAffine", max_rotate_degree=0.0, max_shear_degree=0.0,
                          scaling_ratio_range=(0.5, 1.5), max_translate_ratio=0.1, border=(0, 0),
                          border_val=(PAD_VALUE,) * 3))
    if "hsv" in spec.augment:
        train.append(dict(type="YOLOXHSVRandomAug"))
    if "flip" in spec.augment:
        train.append(dict(type="RandomFlip", prob=0.5))
    train += [dict(type="Resize", scale=size, keep_ratio=True), pad,
              dict(type="FilterAnnotations", min_gt_bbox_wh=(1, 1), keep_empty=False),
              dict(type="PackDetInputs")]
    test = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=size, keep_ratio=True), pad,
            dict(type="LoadAnnotations", with_bbox=True),
            dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    return train, test


def _dataset(ds: DatasetSpec, classes: list[str], pipeline: list[dict], test_mode: bool) -> dict:
    out = dict(type="CocoDataset", data_root="", ann_file=str(ds.ann_file),
               data_prefix=dict(img=str(ds.img_root) + "/"), metainfo=dict(classes=tuple(classes)),
               pipeline=pipeline, test_mode=test_mode, backend_args=None)
    if not test_mode:
        out["filter_cfg"] = dict(filter_empty_gt=False, min_size=1)
    return out


def _schedulers(spec: TrainSpec, iters_per_epoch: int) -> list[dict]:
    total = spec.epochs * iters_per_epoch
    warm = min(int(round(spec.warmup_epochs * iters_per_epoch)), total)
    lr = spec.effective_lr
    out: list[dict] = []
    if warm > 0:
        out.append(dict(type="mmdet.QuadraticWarmupLR", by_epoch=False, begin=0, end=warm))
    if total > warm:
        if spec.schedule == "cosine":
            out.append(dict(type="CosineAnnealingLR", by_epoch=False, begin=warm, end=total, T_max=total - warm,
                            eta_min=lr * spec.min_lr_ratio))
        elif spec.schedule == "step":
            span = total - warm
            out.append(dict(type="MultiStepLR", by_epoch=False, begin=warm, end=total, gamma=0.1,
                            milestones=sorted({max(1, int(0.7 * span)), max(1, int(0.9 * span))})))
    return out


def build_config(spec: TrainSpec) -> Any:
    """The fully resolved mmengine ``Config`` for ``spec`` (work_dir = ``spec.work_dir``).

    Raises ``InputError`` for unusable datasets or losses. ``load_from`` is left unset:
    ``tasks.train`` points it at the head-transferred initial weights it prepares.
    """
    from mmengine.config import Config

    from detection.detector import resolve_device

    base = _base_config(spec)
    train_stats = check_dataset(spec.train, spec.classes, "train")
    val_spec = spec.val or spec.train
    if spec.val is not None:
        check_dataset(spec.val, spec.classes, "val")
    model = _model(spec, base)
    device = resolve_device(spec.device)
    optim_wrapper, amp = optim_wrapper_config(spec, device)
    lr = spec.effective_lr
    train_pipe, test_pipe = _pipelines(spec)
    # mmengine's DefaultSampler gives each process ceil(n / world) images (padding by repetition)
    iters_per_epoch = math.ceil(math.ceil(train_stats.n_images / spec.world_size) / spec.batch_size)
    val_loader = _loader(spec, _dataset(val_spec, spec.classes, test_pipe, True), False)
    evaluator = dict(type="CocoMetric", ann_file=str(val_spec.ann_file), metric="bbox", format_only=False,
                     backend_args=None, **({"collect_device": "gpu"} if spec.world_size > 1 else {}))
    cfg = dict(
        default_scope="mmdet",
        custom_imports=dict(imports=["tasks.train_hooks", *(["detection.transforms"] if spec.erase_ignored else [])],
                            allow_failed_imports=False),
        model=model,
        work_dir=str(spec.work_dir),
        experiment_name=f"{Path(spec.work_dir).name}_{time.strftime('%Y%m%d_%H%M%S')}_{time.time_ns() % 10**9:09d}",
        train_dataloader=_loader(spec, _dataset(spec.train, spec.classes, train_pipe, False), True),
        val_dataloader=val_loader,
        test_dataloader=copy.deepcopy(val_loader),
        val_evaluator=evaluator,
        test_evaluator=copy.deepcopy(evaluator),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=spec.epochs, val_interval=spec.val_interval),
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
        optim_wrapper=optim_wrapper,
        param_scheduler=_schedulers(spec, iters_per_epoch),
        default_hooks=_default_hooks(iters_per_epoch),
        custom_hooks=_custom_hooks(spec),
        **_distributed(spec, device),
        visualizer=dict(type="DetLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")]),
        log_processor=dict(type="LogProcessor", window_size=max(1, min(50, iters_per_epoch)), by_epoch=True),
        log_level="INFO",
        randomness=dict(seed=spec.seed, deterministic=_deterministic(spec.deterministic, device)),
        load_from=None,
        resume=False,
        rgb2thermal=dict(classes=list(spec.classes), lr=lr, lr_rule="given" if spec.lr else "0.01 x batch / 64",
                         **_processes(spec, device),
                         iters_per_epoch=iters_per_epoch, train_images=train_stats.n_images,
                         train_boxes=train_stats.n_boxes, validation=("val" if spec.val else "train (no val set)"),
                         device=device, amp=amp),
    )
    return Config(cfg)


def _base_config(spec: TrainSpec) -> Any:
    """The base model's mmdet config (a bundled name or a file); InputError unless it is a
    single-stage detector with ``model.bbox_head.num_classes``."""
    from detection.mmdet_utils import load_config, register_mmdet

    register_mmdet()
    try:
        base = load_config(spec.base_model)
    except FileNotFoundError as exc:
        raise InputError(str(exc), "base_model") from None
    if "model" not in base or "bbox_head" not in base.model or "num_classes" not in base.model.bbox_head:
        raise InputError("base config has no model.bbox_head.num_classes", spec.base_model,
                         "use a single-stage detector config such as yolox_tiny_8xb8-300e_coco")
    return base


def _model(spec: TrainSpec, base: Any) -> dict:
    """The model dict: the base model with ``len(spec.classes)`` head rows, the loss overrides, no
    backbone pretrained ``init_cfg`` (weights come from ``load_from``), ``frozen_stages`` and no
    batch augments (multi-scale resizing of YOLOX)."""
    model = copy.deepcopy(base.model.to_dict())
    head = model["bbox_head"]
    head["num_classes"] = len(spec.classes)
    for slot, loss in spec.losses.items():
        if slot not in head:
            raise InputError(f"the base model's head has no '{slot}'", f"losses.{slot}",
                             f"override one of {[s for s in LOSS_SLOTS if s in head]}")
        head[slot] = _loss_cfg(slot, head[slot], loss.model_dump())
    if "backbone" in model:
        model["backbone"].pop("init_cfg", None)
        if spec.frozen_stages >= 0:
            model["backbone"]["frozen_stages"] = spec.frozen_stages
    dp = model.get("data_preprocessor")
    if dp is not None and dp.get("batch_augments"):
        dp["batch_augments"] = None
    return model


def optim_wrapper_config(spec: TrainSpec, device: str) -> tuple[dict, bool]:
    """mmengine's ``optim_wrapper`` for ``spec`` on ``device``, and whether it is mixed precision.

    AMP (mmengine's ``AmpOptimWrapper``, fp16 autocast + loss scaling, which mmdet's YOLOX supports)
    is on by default on CUDA and off on CPU, where it would be slower than fp32; ``spec.amp`` forces
    it either way, and asked for on a CPU it is an ``InputError``. No weight decay on norms and
    biases; optional gradient clipping (L2 norm).

    Args:
        spec: the training spec (optimizer, lr, momentum, weight decay, grad_clip, amp).
        device: the resolved training device (``cpu``, ``cuda``, ``cuda:N``).

    Returns:
        ``(optim_wrapper config dict, amp)``.

    Raises:
        InputError: ``spec.amp`` is True and ``device`` is not CUDA.
    """
    amp = spec.amp if spec.amp is not None else device.startswith("cuda")
    if amp and not device.startswith("cuda"):
        raise InputError("amp=True needs CUDA", "amp", "drop amp or train on a GPU")
    lr = spec.effective_lr
    if spec.optimizer == "sgd":
        optimizer = dict(type="SGD", lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=True)
    else:
        optimizer = dict(type="AdamW", lr=lr, weight_decay=spec.weight_decay, betas=(spec.momentum, 0.999))
    optim_wrapper = dict(type="AmpOptimWrapper" if amp else "OptimWrapper", optimizer=optimizer,
                         paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
    if spec.grad_clip:
        optim_wrapper["clip_grad"] = dict(max_norm=spec.grad_clip, norm_type=2)
    return optim_wrapper, amp


def dist_backend(device: str) -> str:
    """torch.distributed backend of a training on ``device``: ``nccl`` on CUDA, ``gloo`` on CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def _distributed(spec: TrainSpec, device: str) -> dict:
    """The config keys of how many processes train. One process: mmengine's defaults (no launcher,
    the config as it always was). Several (under torchrun): ``launcher='pytorch'``, the backend by
    device, mmengine's DDP wrapper and validation results gathered through the process group.

    The wrapper is mmengine's default (``MMDistributedDataParallel``, ``broadcast_buffers=False``), but
    on CPU without ``device_ids`` (mmengine passes ``[LOCAL_RANK]``, which DDP refuses for a CPU
    module), and with ``find_unused_parameters`` when ``frozen_stages`` freezes backbone stages: mmdet
    turns their ``requires_grad`` off in ``model.train()``, after mmengine has wrapped the model, so DDP
    would wait for their gradients forever ("Expected to have finished reduction in the prior
    iteration"). No ``sync_bn``: BatchNorm statistics stay per process, and with ``freeze_bn`` frozen.
    The evaluator's ``collect_device='gpu'`` is mmengine's name for gathering through the process
    group (``all_gather_object``; gloo on CPU too); its default ``'cpu'`` passes the results through
    a temporary folder created under the *current* folder (``.dist_test``), which nodes do not share."""
    env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                   dist_cfg=dict(backend="nccl"))
    if spec.world_size == 1:
        return dict(env_cfg=env_cfg)
    env_cfg["dist_cfg"] = dict(backend=dist_backend(device))
    return dict(launcher="pytorch", env_cfg=env_cfg,
                model_wrapper_cfg=dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                                       find_unused_parameters=spec.frozen_stages >= 0,
                                       **({} if device.startswith("cuda") else {"device_ids": None})))


def _processes(spec: TrainSpec, device: str) -> dict:
    """The record of a several-process training (``rgb2thermal`` block); nothing for one process."""
    if spec.world_size == 1:
        return {}
    return dict(processes=spec.world_size, nnodes=spec.nnodes, backend=dist_backend(device),
                batch="batch_size per process; the lr rule's batch is batch_size x processes")


def _loader(spec: TrainSpec, ds: dict, shuffle: bool) -> dict:
    workers = spec.num_workers
    return dict(batch_size=spec.batch_size, num_workers=workers, persistent_workers=workers > 0,
                drop_last=False, sampler=dict(type="DefaultSampler", shuffle=shuffle), dataset=ds)


def _default_hooks(iters_per_epoch: int) -> dict:
    """mmengine's default hooks; checkpoints every epoch through the atomic file backend, keeping the
    last one and the best by :data:`BEST_METRIC`."""
    return dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=max(1, min(50, iters_per_epoch))),
        param_scheduler=dict(type="ParamSchedulerHook"),
        checkpoint=dict(type="CheckpointHook", interval=1, by_epoch=True, max_keep_ckpts=1,
                        save_best=BEST_METRIC, rule="greater", save_last=True,
                        backend_args=dict(backend="rgb2thermal_atomic_local")),
        sampler_seed=dict(type="DistSamplerSeedHook"),
    )


def _custom_hooks(spec: TrainSpec) -> list[dict]:
    """Our hooks (:mod:`tasks.train_hooks`) plus EMA and early stopping when the spec asks for them."""
    custom_hooks: list[dict] = [dict(type="NonFiniteLossGuardHook", priority="VERY_HIGH"),
                                dict(type="EpochSeedHook", seed=spec.seed, priority="VERY_HIGH")]
    if spec.freeze_bn:
        custom_hooks.append(dict(type="FrozenBatchNormHook", priority="VERY_HIGH"))
    if spec.ema:
        custom_hooks.append(dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=0.0001,
                                 update_buffers=True, priority=49))
    if spec.early_stop_patience:
        custom_hooks.append(dict(type="EarlyStoppingHook", monitor=BEST_METRIC, rule="greater",
                                 patience=spec.early_stop_patience, min_delta=spec.early_stop_min_delta))
    custom_hooks.append(dict(type="ProgressHook", show_bar=spec.progress, priority="LOWEST"))
    return custom_hooks


def _deterministic(asked: bool, device: str) -> bool:
    """mmengine's ``randomness.deterministic`` for ``TrainSpec.deterministic`` on ``device``: on CPU
    (the demo's target) it is honoured; on CUDA it is not tested here (cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG and some kernels have no deterministic version, so torch may raise
    mid-training), so it is dropped with a WARNING rather than risk a failed run."""
    if asked and device != "cpu":
        log.warning("deterministic training is only supported on CPU here: training on %s without it", device)
        return False
    return asked
