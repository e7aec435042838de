"""A loaded MMDetection detector and batched prediction of in-memory images.

Why this module exists: every stage that runs a detector (RGB teacher inference, thermal
student evaluation, ``rgb2thermal predict``) must load checkpoints the same safe way, feed
images through the *config's own* test pipeline (a model trained on BGR 0-255 input with
keep-ratio resize + 114 padding must be fed exactly that), and hand back boxes in the
internal convention. Doing it once here keeps those from drifting apart.

Conventions:
- Input images are numpy ``uint8`` arrays, BGR (OpenCV order), ``H x W x 3``. A gray thermal
  frame (``H x W`` or ``H x W x 1``) is replicated to 3 channels, which is what detectors
  trained on RGB-like input expect.
- Output boxes are ``xyxy`` float pixels in the ORIGINAL image (the pipeline's resize and
  padding are undone by the model's ``rescale=True``), clipped to the image.
- Labels are 0-based indices into ``Detector.classes``; COCO category ids appear only in the
  files the infer stage writes (``tasks.infer``), matched to a data set's categories by name
  (:func:`label_map_by_name`).

Running a detector over a data set (with its per-image cache and TTA) is ``tasks.infer``'s job,
the only one: this module loads detectors and predicts one batch of in-memory images.

``mmdet``/``torch`` are imported inside functions so importing this module is cheap.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import hashing
from core.boxes import clip
from core.errors import InputError
from core.images import to_bgr_u8
from detection.checkpoints import checkpoint_classes, read_checkpoint, unreadable_checkpoint_error  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"


@dataclass
class Detector:
    """A loaded mmdet detector (eval mode) and what it is.

    ``fingerprint`` identifies the exact weights + config: sha256 of the resolved config
    (canonical JSON of every field; cheaper than mmengine's yapf-formatted text) and the
    checkpoint file's bytes. Without a checkpoint it is ``"random-init:<sha256 of
    config text + initial weights>"`` so a random model can never be mistaken for a trained one.
    """

    model: Any                 # torch.nn.Module (mmdet BaseDetector)
    cfg: Any                   # mmengine.Config, fully resolved
    classes: tuple[str, ...]
    device: str
    fingerprint: str
    description: str


@dataclass(frozen=True)
class Detections:
    """Detections of one image in the internal convention.

    ``boxes`` ``(N, 4)`` float64 ``xyxy`` pixels in the original image; ``scores`` ``(N,)``
    in [0, 1]; ``labels`` ``(N,)`` int64 indices into ``Detector.classes``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; an unavailable ``cuda`` is an input error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' requested but CUDA is not available", "device",
                         "use device 'cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"unknown device '{device}'", "device", "use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def _config_classes(cfg: Any) -> tuple[str, ...] | None:
    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        dl = cfg.get(key)
        ds = dl.get("dataset") if dl else None
        while ds is not None:
            meta = ds.get("metainfo")
            if meta and meta.get("classes"):
                return tuple(meta["classes"])
            ds = ds.get("dataset")
    return None


def load_detector(config: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None,
                  device: str = "auto", classes: Sequence[str] | None = None, *, trusted: bool = True) -> Detector:
    """Build the detector of ``config`` and load ``checkpoint`` into it (strictly).

    Args:
        config: a path to an mmdet ``.py`` config or a bundled name (``yolox_tiny_8xb8-300e_coco``).
        checkpoint: weights file, or None for random weights (marked in the fingerprint).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`resolve_device`).
        classes: class names when neither the checkpoint nor the config names them.
        trusted: unpickle the checkpoint in full (a file the user named); False keeps torch's strict
            ``weights_only`` default (a file a pointer named, e.g. the nightly champion's archive).

    Class names come from the checkpoint's metadata, else ``classes``, else the config's
    dataset ``metainfo``; when both checkpoint and ``classes`` name classes they must agree.
    The head's ``num_classes`` is set to the number of classes. Missing or mismatched
    weights are an ``InputError`` (a half-loaded detector silently predicts garbage).
    """
    import torch

    from detection.mmdet_utils import load_config

    try:
        cfg = load_config(config)
    except FileNotFoundError as exc:
        raise InputError(str(exc), str(config), "pass an mmdet config path or bundled config name") from None
    dev = resolve_device(device)
    ckpt = read_checkpoint(checkpoint, trusted=trusted) if checkpoint is not None else None
    resolved = _resolve_classes(cfg, ckpt, classes, config, checkpoint)
    model = _build(cfg, config, len(resolved), from_checkpoint=ckpt is not None)
    if ckpt is not None:
        _load_state_strict(model, ckpt["state_dict"], str(checkpoint))
    fingerprint, description = _identity(cfg, model, config, checkpoint, resolved)
    model.cfg = cfg
    model.dataset_meta = {"classes": tuple(resolved)}
    model.to(torch.device(dev)).eval()
    return Detector(model=model, cfg=cfg, classes=tuple(resolved), device=dev,
                    fingerprint=fingerprint, description=description)


def _resolve_classes(cfg: Any, ckpt: Mapping[str, Any] | None, classes: Sequence[str] | None,
                     config: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None) -> tuple[str, ...]:
    """The detector's class names: the checkpoint's, else ``classes``, else the config's (they must agree)."""
    ck_classes = checkpoint_classes(ckpt) if ckpt is not None else None
    if classes is not None:
        classes = tuple(classes)
        if ck_classes is not None and classes != ck_classes:
            raise InputError(f"classes {list(classes)} differ from the checkpoint's classes {list(ck_classes)}",
                             str(checkpoint), "omit classes (they are read from the checkpoint) or pass the same list")
    resolved = ck_classes or classes or _config_classes(cfg)
    if not resolved:
        raise InputError("the detector's class names are unknown (not in the checkpoint, the config or the call)",
                         str(checkpoint or config), "pass classes=[...] (e.g. ['person', 'car'])")
    return tuple(resolved)


def _build(cfg: Any, config: str | os.PathLike[str], num_classes: int, *, from_checkpoint: bool) -> Any:
    """The config's model with ``num_classes`` head outputs; weights initialised only when no
    checkpoint follows (every weight then comes from the checkpoint), pretrained backbones never fetched."""
    from detection.mmdet_utils import build_model

    head = cfg.model.get("bbox_head")
    if head is None or "num_classes" not in head:
        raise InputError("config has no model.bbox_head.num_classes (only single-stage heads are supported)",
                         str(config), "use a YOLOX/RetinaNet-style config")
    head.num_classes = num_classes
    if "backbone" in cfg.model and "init_cfg" in cfg.model.backbone:
        cfg.model.backbone.init_cfg = None  # never fetch pretrained backbone weights at load time
    if not from_checkpoint:
        return build_model(cfg.model)
    from mmdet.registry import MODELS

    from detection.mmdet_utils import register_mmdet

    register_mmdet()
    return MODELS.build(cfg.model)  # no init_weights(): every weight comes from the checkpoint


def _identity(cfg: Any, model: Any, config: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None,
              classes: tuple[str, ...]) -> tuple[str, str]:
    """``(fingerprint, description)`` of a loaded detector (see :class:`Detector`)."""
    if checkpoint is not None:
        sha = hashing.file_sha256(checkpoint)
        fingerprint = hashing.json_sha256({"config": _prediction_config(cfg), "checkpoint": sha})
        return fingerprint, (f"{Path(str(config)).name} + {Path(checkpoint).name} "
                             f"(sha256 {hashing.short(sha, 12)}), classes {list(classes)}")
    h = hashing.bytes_sha256(hashing.json_sha256(_prediction_config(cfg)).encode() + _state_bytes(model))
    log.warning("detector %s has random weights (no checkpoint given)", Path(str(config)).name)
    return (f"{RANDOM_INIT}:{h}",
            f"{Path(str(config)).name} with RANDOM WEIGHTS (no checkpoint), classes {list(classes)}")


def _state_bytes(model: Any) -> bytes:
    return b"".join(t.detach().cpu().contiguous().numpy().tobytes() for t in model.state_dict().values())


def _prediction_config(cfg: Any) -> dict:
    """The parts of a config that change predictions: the model (with its data preprocessor) and
    the test pipeline. Not the training sections: they name dataset files by path, and a
    fingerprint must not change when the same model is used from another folder."""
    d = cfg.to_dict()
    test = (d.get("test_dataloader") or {}).get("dataset") or {}
    return {"model": d.get("model"), "test_pipeline": test.get("pipeline", d.get("test_pipeline"))}


def _load_state_strict(model: Any, state_dict: Mapping[str, Any], where: str) -> None:
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise InputError("checkpoint does not fit the config: " + "; ".join(mismatched[:4])
                         + (f" (+{len(mismatched) - 4} more)" if len(mismatched) > 4 else ""),
                         where, "use the config the checkpoint was trained with, and the same classes "
                                "(to change classes, train with head transfer: rgb2thermal train)")
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    if missing:
        raise InputError(f"checkpoint lacks {len(missing)} weights of the model, e.g. {missing[:3]}", where,
                         "use the config the checkpoint was trained with")
    unexpected = [k for k in state_dict if k not in own]
    if unexpected:
        log.warning("%s: %d checkpoint keys are not used by the model, e.g. %s", where, len(unexpected), unexpected[:3])
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def test_pipeline_cfg(cfg: Any, input_size: tuple[int, int] | None = None) -> list[dict]:
    """The config's test pipeline for in-memory images (no file loading, no annotations).

    ``input_size`` ``(w, h)`` pixels replaces the ``scale`` of its ``Resize`` steps and the
    ``size`` of its fixed-size ``Pad`` steps (a second test scale: small objects, e.g. night
    pedestrians 10-25 px wide, are found more often at a larger input); None keeps the config's."""
    import copy

    dl = cfg.get("test_dataloader") or cfg.get("val_dataloader")
    pipeline = None
    if dl is not None:
        ds = dl.dataset
        while ds is not None and "pipeline" not in ds:
            ds = ds.get("dataset")
        pipeline = ds.pipeline if ds is not None else None
    pipeline = pipeline or cfg.get("test_pipeline")
    if not pipeline:
        raise InputError("config has no test pipeline", "config", "add test_dataloader.dataset.pipeline")
    out = []
    for step in copy.deepcopy(list(pipeline)):
        t = str(step["type"]).split(".")[-1]
        if t in ("LoadImageFromFile", "LoadImageFromNDArray"):
            out.append(dict(type="mmdet.LoadImageFromNDArray"))
        elif t in ("LoadAnnotations",):
            continue
        else:
            step = dict(step)
            if input_size is not None and t in ("Resize", "FixScaleResize") and "scale" in step:
                step["scale"] = tuple(int(v) for v in input_size)
            if input_size is not None and t == "Pad" and step.get("size") is not None:
                step["size"] = tuple(int(v) for v in input_size)
            out.append(step)
    if "LoadImageFromNDArray" not in str(out[0]["type"]):
        out.insert(0, dict(type="mmdet.LoadImageFromNDArray"))
    return out


def effective_test_size(detector: Detector, input_size: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The test input ``(w, h)`` in pixels a detector runs at: ``input_size`` when given, else the
    ``scale`` of its config's test ``Resize`` (None when the pipeline has none). Reported next to
    every score, because a model scored at one size and used at another is not the model measured."""
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    for step in test_pipeline_cfg(detector.cfg):
        if str(step["type"]).split(".")[-1] in ("Resize", "FixScaleResize") and step.get("scale") is not None:
            scale = step["scale"]
            return (int(scale), int(scale)) if isinstance(scale, (int, float)) else (int(scale[0]), int(scale[1]))
    return None


def _as_bgr3(img: np.ndarray, i: int) -> np.ndarray:
    """An in-memory image must already be 8-bit gray or BGR (other depths are not silently rescaled
    here: decode files with ``core.images``); gray is replicated by ``core.images.to_bgr_u8``."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise InputError(f"image {i} must be a uint8 numpy array, got {getattr(img, 'dtype', type(img))}",
                         "predict_batch", "decode images with core.images.read_image + to_bgr_u8 (BGR uint8)")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3)):
        return to_bgr_u8(img)
    raise InputError(f"image {i} has shape {img.shape}; expected HxW (gray) or HxWx3 (BGR)", "predict_batch",
                     "convert to 8-bit gray or BGR")


def build_test_pipeline(detector: Detector, input_size: tuple[int, int] | None = None) -> Any:
    """The config's test pipeline (:func:`test_pipeline_cfg`) as an mmcv ``Compose``, built once.

    Why a function of its own: building it costs more than running it on a small image, and a
    loop over thousands of frames (``tasks.infer``) builds it once and runs it in a prefetch thread
    while the model runs the previous batch. It holds no per-image state, so one instance may be
    called from several threads.
    """
    from mmcv.transforms import Compose

    from detection.mmdet_utils import register_mmdet

    register_mmdet()
    return Compose(test_pipeline_cfg(detector.cfg, input_size))


def preprocess(pipeline: Any, img: np.ndarray, i: int = 0) -> tuple[dict, tuple[int, int]]:
    """One image through a :func:`build_test_pipeline` pipeline (resize, pad, pack: CPU work that
    releases the GIL in OpenCV): ``(packed {inputs, data_samples}, (width, height) of the original)``.

    ``img``: BGR uint8 or gray (replicated); ``i`` is its index in error messages.
    """
    bgr = _as_bgr3(img, i)
    return pipeline(dict(img=bgr, img_id=i)), (bgr.shape[1], bgr.shape[0])


def predict_packed(detector: Detector, packed: Sequence[dict], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    """ONE batched forward pass over images already through :func:`preprocess`: the model's data
    preprocessor (stack, pad, normalise) then ``model.test_step``. Boxes are ``xyxy`` pixels in each
    original image (``sizes``: its ``(width, height)``), clipped to it."""
    import torch

    if len(packed) == 0:
        return []
    with torch.no_grad():
        results = detector.model.test_step(dict(inputs=[p["inputs"] for p in packed],
                                                data_samples=[p["data_samples"] for p in packed]))
    out = []
    for res, (w, h) in zip(results, sizes):
        inst = res.pred_instances
        boxes = clip(inst.bboxes.detach().cpu().numpy().astype(np.float64), w, h)
        out.append(Detections(boxes=boxes,
                              scores=inst.scores.detach().cpu().numpy().astype(np.float64),
                              labels=inst.labels.detach().cpu().numpy().astype(np.int64)))
    return out


def predict_batch(detector: Detector, images: Sequence[np.ndarray],
                  input_size: tuple[int, int] | None = None) -> list[Detections]:
    """Detect objects in ``images`` (BGR uint8, gray replicated) with ONE batched forward pass.

    Images go through the config's test pipeline and the model's data preprocessor (so
    resize/pad/normalisation are exactly those the model was trained with), then
    ``model.test_step``. Returned boxes are ``xyxy`` pixels in each original image.
    ``input_size`` ``(w, h)``: run at this test size instead of the config's (see
    :func:`test_pipeline_cfg`). The same as :func:`build_test_pipeline` + :func:`preprocess` per
    image + :func:`predict_packed`, which a loop over many frames uses to build the pipeline once.
    """
    if len(images) == 0:
        return []
    pipeline = build_test_pipeline(detector, input_size)
    prepared = [preprocess(pipeline, img, i) for i, img in enumerate(images)]
    return predict_packed(detector, [p for p, _ in prepared], [s for _, s in prepared])


def label_map_by_name(classes: Sequence[str], categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """``{detector label: COCO category id}`` matching class names to the dataset's categories.

    Detector classes without a category of the same name are not mapped (their detections
    are dropped); when no class matches at all this is an input error.
    """
    by_name = {c["name"]: int(c["id"]) for c in categories}
    mapping = {i: by_name[n] for i, n in enumerate(classes) if n in by_name}
    if not mapping:
        raise InputError(f"none of the detector's classes {list(classes)[:10]} is a category of the dataset "
                         f"{sorted(by_name)}", "label mapping", "use a detector trained for these classes")
    return mapping
