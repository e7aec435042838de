"""SAM2 box refinement: one image embedding per image, all its boxes in one prompt call.

Why batched: the image encoder is >90% of SAM2's cost (≈1.8 s per frame for hiera-tiny on
a 2-core CPU, whatever the frame size: SAM2 resizes to 1024x1024); prompting one box at a
time re-encodes or at least re-runs the decoder per box. Here each image is encoded once
(``set_image``, or ``set_image_batch`` for several images) and all its boxes go to the mask
decoder in one ``predict(box=(N, 4), multimask_output=False)`` call (``predict_batch`` for
an image batch). Very many boxes on one image are split into chunks of
``max_boxes_per_call`` to bound the memory of the full-resolution masks
(``N x H x W`` float32); a batch holding such an image is processed image by image.

Coordinates: prompt and output boxes are ``xyxy`` float pixels of the image given to
SAM2 (its original resolution; SAM2 handles its own resizing); the tight box of a mask over
pixel columns ``c0..c1`` is ``x1=c0, x2=c1+1``.

Checkpoints: sam2 1.1.0's ``build_sam2(config, ckpt)`` calls
``torch.load(ckpt, weights_only=True)["model"]`` with ``weights_only`` passed *explicitly*, so
no caller can change it, and a checkpoint saved by SAM2's own
training code (optimizer state, meters and other pickled objects beside ``model``) fails with
``UnpicklingError``. So the model is built without weights and the state dict is loaded here:
strict ``weights_only=True`` first (official checkpoints are plain tensors and load that way);
only if that fails is *this one user-named file* unpickled fully
(:func:`core.compat.load_trusted_checkpoint`), with a WARNING and a note in the model
description. A checkpoint that does not fit the config (e.g. a hiera-large checkpoint with the
hiera-tiny config) is an ``InputError`` naming both.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from core.hashing import file_sha256, json_sha256, short

log = logging.getLogger(__name__)

METHOD = "sam2"
DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@dataclass(frozen=True)
class Sam2Config:
    """How to build SAM2.

    - ``config``: a model config bundled with the ``sam2`` package, e.g.
      ``configs/sam2.1/sam2.1_hiera_t.yaml`` (``_t``/``_s``/``_b+``/``_l``: match the checkpoint).
    - ``checkpoint``: the user's SAM2 checkpoint (``.pt``). ``None`` is only valid together
      with ``random_weights=True`` (tests and timing benchmarks: the masks are meaningless).
    - ``device``: ``cpu`` or ``cuda[:N]``.
    - ``mask_threshold``: logit threshold that binarises SAM2's masks (SAM2's default 0.0).
    - ``max_boxes_per_call``: boxes per decoder call on one image (memory bound).
    - ``image_batch_size``: images encoded together with ``set_image_batch`` (1 = one at a time).
    - ``seed``: torch seed for random weights (deterministic random model).
    """

    config: str = DEFAULT_CONFIG
    checkpoint: str | None = None
    device: str = "cpu"
    random_weights: bool = False
    mask_threshold: float = 0.0
    max_boxes_per_call: int = 64
    image_batch_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.checkpoint is None and not self.random_weights:
            raise InputError("no SAM2 checkpoint given", "refine params",
                             "pass --sam2-checkpoint PATH (or use the classical refiner)")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise InputError(f"SAM2 checkpoint not found: {self.checkpoint}", "refine params",
                             "check the path of the SAM2 .pt file")
        if self.max_boxes_per_call < 1 or self.image_batch_size < 1:
            raise InputError("max_boxes_per_call and image_batch_size must be >= 1", "refine params",
                             "use e.g. 64 and 1")


def _config_name(config: str) -> str:
    """A config name hydra can compose: a bundled name, or a file inside the sam2 package."""
    import sam2

    pkg = Path(sam2.__file__).resolve().parent
    p = Path(config)
    if p.is_file():
        try:
            return str(p.resolve().relative_to(pkg))
        except ValueError:
            raise InputError(f"SAM2 config {config} is not one of the configs bundled with sam2", "refine params",
                             f"pass a bundled name such as {DEFAULT_CONFIG} (files under {pkg}/configs)") from None
    if not (pkg / config).is_file():
        raise InputError(f"unknown SAM2 config '{config}'", "refine params",
                         f"pass a bundled name such as {DEFAULT_CONFIG} (files under {pkg}/configs)")
    return config


def masks_to_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight ``xyxy`` boxes of ``(N, H, W)`` boolean masks; ``(boxes, empty)`` with NaN rows where empty."""
    n = masks.shape[0]
    boxes = np.full((n, 4), np.nan)
    if n == 0:
        return boxes, np.zeros(0, dtype=bool)
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    empty = ~rows.any(axis=1)
    h, w = masks.shape[1], masks.shape[2]
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    full = np.stack([x0, y0, x1, y1], axis=1).astype(np.float64)
    boxes[~empty] = full[~empty]
    return boxes, empty


def _load_state(model: Any, ckpt: str, config_name: str) -> str:
    """Load a SAM2 checkpoint's ``model`` state dict into ``model``; returns how it was read. A damaged
    file (truncated, zero bytes, not a checkpoint) is an InputError naming it, as for detector checkpoints."""
    import pickle
    import zipfile

    import torch

    from core.compat import load_trusted_checkpoint

    from detection.detector import unreadable_checkpoint_error

    try:
        try:
            sd = torch.load(ckpt, map_location="cpu", weights_only=True)
            how = "loaded weights_only"
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc):
                raise
            log.warning("SAM2 checkpoint %s holds more than tensors (a training checkpoint?): unpickling this "
                        "user-named file fully; only name files you trust", ckpt)
            sd = load_trusted_checkpoint(ckpt)
            how = "loaded by full unpickling (trusted user file)"
    except (pickle.UnpicklingError, EOFError, RuntimeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        err = unreadable_checkpoint_error(ckpt, exc)      # a damaged .pt: one line naming the file, no traceback
        if err is None:
            raise
        raise err from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise InputError(f"{ckpt} is not a SAM2 checkpoint (no state dict)", "refine params",
                         "pass a SAM2 .pt file such as sam2.1_hiera_tiny.pt")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise InputError(f"SAM2 checkpoint {ckpt} does not fit config {config_name} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                         f"{(list(missing) + list(unexpected))[:3]})", "refine params",
                         "pass the config matching the checkpoint (hiera_t/_s/_b+/_l)")
    return how


class Sam2Refiner:
    """A loaded ``SAM2ImagePredictor`` plus what identifies it (for caches and reports)."""

    method = METHOD

    def __init__(self, predictor: Any, cfg: Sam2Config, fingerprint: str, description: str) -> None:
        self.predictor = predictor
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.description = description

    @classmethod
    def load(cls, cfg: Sam2Config) -> Sam2Refiner:
        """Build SAM2 from ``cfg`` (random weights only when ``cfg.random_weights``)."""
        import torch
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        name = _config_name(cfg.config)
        if cfg.checkpoint is None:
            torch.manual_seed(cfg.seed)
            model = build_sam2(name, ckpt_path=None, device=cfg.device)
            fingerprint = json_sha256({"sam2_config": name, "weights": f"random-init-seed{cfg.seed}",
                                       "torch": torch.__version__})
            description = (f"SAM2 {name} with RANDOM weights (seed {cfg.seed}): for tests/timing only, "
                           f"the masks are meaningless")
            log.warning("SAM2 is running with RANDOM weights (%s): refined boxes are meaningless", name)
        else:
            ckpt = str(Path(cfg.checkpoint).resolve())
            model = build_sam2(name, ckpt_path=None, device=cfg.device)
            how = _load_state(model, ckpt, name)
            digest = file_sha256(ckpt)
            fingerprint = json_sha256({"sam2_config": name, "checkpoint_sha256": digest})
            description = f"SAM2 {name}, checkpoint {os.path.basename(ckpt)} (sha256 {short(digest, 12)}; {how})"
        predictor = SAM2ImagePredictor(model, mask_threshold=cfg.mask_threshold)
        return cls(predictor, cfg, fingerprint, description)

    def _result(self, masks: np.ndarray, scores: np.ndarray, n: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Normalise SAM2's squeezed outputs (``(H,W)``/``(1,H,W)``/``(N,1,H,W)``) to ``(N,H,W)``, ``(N,)``."""
        m = np.asarray(masks).reshape(n, hw[0], hw[1]) > 0.5
        s = np.asarray(scores, dtype=np.float64).reshape(n)
        boxes, _ = masks_to_boxes(m)
        return boxes, s

    def _predict_single(self, boxes: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        out_b, out_s = [], []
        step = self.cfg.max_boxes_per_call
        for i in range(0, len(boxes), step):
            chunk = boxes[i:i + step].astype(np.float32)
            masks, scores, _ = self.predictor.predict(box=chunk, multimask_output=False)
            b, s = self._result(masks, scores, len(chunk), hw)
            out_b.append(b)
            out_s.append(s)
        return np.concatenate(out_b), np.concatenate(out_s)

    def refine_images(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Refine the boxes of several images: ``[(new_boxes (N,4) xyxy, scores (N,)), ...]``.

        ``images`` are RGB uint8 ``(H, W, 3)`` (``core.images.to_rgb_u8``); every image must have at least one box.
        One image -> ``set_image`` + ``predict``; several -> ``set_image_batch`` + ``predict_batch``.
        """
        import torch

        if len(images) != len(boxes) or any(len(b) == 0 for b in boxes):
            raise ValueError("refine_images needs one non-empty box array per image")
        if len(images) > 1 and any(len(b) > self.cfg.max_boxes_per_call for b in boxes):
            # predict_batch cannot chunk one image's prompts: bound the mask memory per image instead
            return [self.refine_images([im], [b])[0] for im, b in zip(images, boxes)]
        with torch.inference_mode():
            if len(images) == 1:
                self.predictor.set_image(images[0])
                result = [self._predict_single(boxes[0], images[0].shape[:2])]
            else:
                self.predictor.set_image_batch(list(images))
                masks_l, scores_l, _ = self.predictor.predict_batch(
                    box_batch=[b.astype(np.float32) for b in boxes], multimask_output=False)
                result = [self._result(m, s, len(b), im.shape[:2])
                          for m, s, b, im in zip(masks_l, scores_l, boxes, images)]
            self.predictor.reset_predictor()
        return result
