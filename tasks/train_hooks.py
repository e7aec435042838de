"""MMDetection hooks of a guarded training (registered in mmengine's hook registry, so the
written ``config.py`` names them and stays runnable with mmdet's own tools:
``custom_imports: tasks.train_hooks``).

- ``NonFiniteLossGuardHook`` stops at the first NaN/inf loss (``NonFiniteLossError``);
- ``FrozenBatchNormHook`` keeps BatchNorm in eval mode (BN-folded checkpoints, small batches);
- ``EpochSeedHook`` re-seeds every epoch, so a resumed training ends with the same weights;
- ``ProgressHook`` shows a tqdm bar with ETA, records iteration timings and the validation history
  (kept in ``val_history.json``, so a resumed training reports the epochs before the kill too, and
  validates an epoch whose checkpoint was saved but whose validation the kill cut short; a sweep
  watching the run prunes on it: one entry per validation, ``epoch`` 1-based, ``coco/bbox_mAP_50``
  etc. as fractions);
- ``AtomicLocalBackend`` (file backend ``rgb2thermal_atomic_local``): mmengine's checkpoints
  written through ``core.atomic``, so a kill during ``epoch_*.pth`` / ``best_*.pth`` leaves the
  previous file or none, never a truncated checkpoint that resume would read;
- ``TRUSTED_SCHEME`` (``rgb2thermal-trusted://<path>``): a checkpoint scheme in mmengine's
  ``CheckpointLoader`` registry whose loader opens ``<path>`` with ``weights_only=False``. The
  training gives the Runner ``load_from=trusted_checkpoint_uri(<its own epoch_N.pth>)`` to resume
  (mmengine training checkpoints pickle more than tensors); any other path the Runner loads goes
  through mmengine's plain local loader and torch's strict ``weights_only`` default. A registry
  entry like the hooks', not a patch of ``torch.load``: trust is carried by the name of the file
  being opened, so it cannot leak into a load in another thread.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from mmengine.fileio import register_backend
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import CheckpointLoader

from core import atomic
from core.errors import InputError

#: the file backend name the CheckpointHook is configured with (``detection.train_config``)
ATOMIC_BACKEND = "rgb2thermal_atomic_local"
VAL_HISTORY = "val_history.json"
#: mmengine checkpoint scheme of a file the training trusts (see the module docstring)
TRUSTED_SCHEME = "rgb2thermal-trusted://"


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, but every write is atomic (temporary + rename).

    Why: mmengine serialises a checkpoint into memory and then writes it in place, so a kill (or a
    full disk) during the write left a truncated ``epoch_N.pth``; ``best_*.pth`` is even written
    after the previous best was deleted. Through ``core.atomic`` the old file stays until the new
    one is whole.
    """

    def put(self, obj: bytes, filepath: Any) -> None:
        atomic.write_bytes(filepath, obj)

    def put_text(self, obj: str, filepath: Any, encoding: str = "utf-8") -> None:
        atomic.write_bytes(filepath, obj.encode(encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def trusted_checkpoint_uri(path: str | Path) -> str:
    """``load_from`` value that makes mmengine unpickle ``path`` fully (resume from a training's own
    checkpoint); only for files the training wrote or the user named."""
    return TRUSTED_SCHEME + str(Path(path).resolve())


def load_from_trusted_local(filename: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` loader of :data:`TRUSTED_SCHEME`: strip the scheme, open the file
    with ``weights_only=False`` (:func:`core.compat.load_trusted_checkpoint`)."""
    from core.compat import load_trusted_checkpoint

    path = Path(filename[len(TRUSTED_SCHEME):]).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} can not be found.")
    return load_trusted_checkpoint(path, map_location=map_location)


# registered once, at import (as mmengine registers its own schemes); ``force`` keeps a re-import harmless
CheckpointLoader.register_scheme(prefixes=TRUSTED_SCHEME, loader=load_from_trusted_local, force=True)


class NonFiniteLossError(InputError):
    """Training produced a NaN/inf loss (or NaN/inf predictions, from which every loss is NaN).

    Raised at the first such iteration; training stops there and no later checkpoint is written.
    ``loss_name`` is the loss (``loss_cls``...) or ``"<module> output"`` when the network's
    own output became non-finite before a loss could be computed.
    """

    def __init__(self, loss_name: str, value: float, iteration: int, epoch: int, lr: float) -> None:
        self.loss_name, self.value, self.iteration, self.epoch, self.lr = loss_name, value, iteration, epoch, lr
        what = (f"loss '{loss_name}' became {value}" if not loss_name.endswith(" output") else
                f"the {loss_name} became {value} (so every loss is non-finite)")
        super().__init__(f"{what} at iteration {iteration} (epoch {epoch}), lr={lr:.6g}",
                         "training", "lower the lr (or check the labels for degenerate boxes), enable grad_clip, "
                                     "and with BN-folded checkpoints use freeze_bn + frozen_stages=0")


def _first_nonfinite(obj: Any) -> float | None:
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            bad = obj.detach()[~torch.isfinite(obj.detach())]
            return float(bad.flatten()[0])
        return None
    if isinstance(obj, (list, tuple)):
        for o in obj:
            v = _first_nonfinite(o)
            if v is not None:
                return v
    return None


@HOOKS.register_module(force=True)
class NonFiniteLossGuardHook(Hook):
    """Raise ``NonFiniteLossError`` at the first non-finite loss or network output.

    Losses are checked after each iteration (before checkpointing hooks run). The outputs of
    the detector's parts (backbone, neck, head) are checked by forward hooks during training:
    once weights blow up, YOLOX's label assigner crashes on NaN scores before any loss exists
    ("all elements of input should be between 0 and 1"), so the guard must fire earlier.
    """

    priority = "VERY_HIGH"

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def _lr(self, runner: Any) -> float:
        return float(runner.optim_wrapper.get_lr().get("lr", [float("nan")])[0])

    def before_train(self, runner: Any) -> None:
        from mmengine.model import is_model_wrapper

        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for name, child in model.named_children():
            if name == "data_preprocessor":
                continue

            def check(module: Any, args: Any, output: Any, name: str = name) -> None:
                if not module.training:
                    return
                v = _first_nonfinite(output)
                if v is not None:
                    raise NonFiniteLossError(f"{name} output", v, runner.iter + 1, runner.epoch + 1, self._lr(runner))

            self._handles.append(child.register_forward_hook(check))

    def after_train(self, runner: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        for name, value in (outputs or {}).items():
            if "loss" not in name:
                continue
            v = float(value.item() if hasattr(value, "item") else value)
            if not math.isfinite(v):
                raise NonFiniteLossError(name, v, runner.iter + 1, runner.epoch + 1, self._lr(runner))


@HOOKS.register_module(force=True)
class FrozenBatchNormHook(Hook):
    """Keep every BatchNorm layer in eval mode while training (frozen statistics, affine trainable).

    Needed for BN-folded checkpoints (BN layers are identities there) and good practice at
    small batch sizes. The loop calls ``model.train()`` each epoch, so this re-applies per iteration.
    """

    priority = "VERY_HIGH"

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        from torch.nn.modules.batchnorm import _BatchNorm

        for m in runner.model.modules():
            if isinstance(m, _BatchNorm) and m.training:
                m.eval()


@HOOKS.register_module(force=True)
class EpochSeedHook(Hook):
    """Re-seed Python, NumPy and torch at the start of every epoch from ``(seed, epoch)``.

    Why: mmengine seeds once at start-up and keeps no RNG state in its checkpoints, so a training
    resumed at epoch k would draw other augmentations (flip, affine) than an uninterrupted one and
    end with other weights. Seeded per epoch, epoch k's randomness is the same either way, and a
    run killed and resumed ends with the very weights of a run that was never interrupted.
    """

    priority = "VERY_HIGH"

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def before_train_epoch(self, runner: Any) -> None:
        from mmengine.runner import set_random_seed

        set_random_seed((self.seed * 1_000_003 + int(runner.epoch)) % (2**31))


def _rebase_checkpoint_paths(runner: Any) -> None:
    """Point the resumed checkpoint bookkeeping at files of *this* work dir.

    Why: mmengine stores the best and last checkpoints' absolute paths in the checkpoint's message
    hub; resumed in a copied or moved workspace, its CheckpointHook would delete the *original*
    workspace's ``best_*.pth`` when it saves a new best. Only the file names are kept.
    """
    from pathlib import Path

    from mmengine.hooks import CheckpointHook

    work = Path(runner.work_dir)

    def here(v: Any) -> Any:
        return str(work / Path(v).name) if isinstance(v, str) and v and Path(v).parent != work else v

    for key in ("best_ckpt", "last_ckpt"):
        if key in runner.message_hub.runtime_info:
            runner.message_hub.update_info(key, here(runner.message_hub.get_info(key)))
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook):
            for attr in ("best_ckpt_path", "last_ckpt"):
                if hasattr(hook, attr):
                    setattr(hook, attr, here(getattr(hook, attr)))


@HOOKS.register_module(force=True)
class ProgressHook(Hook):
    """A tqdm bar over all training iterations (ETA included) plus the loss; records timings and
    the validation history.

    The history is written to ``<work_dir>/val_history.json`` after each validation (this hook
    runs after the CheckpointHook, so a recorded epoch's best checkpoint is already saved). A
    resumed training reads it back, and validates the resumed epoch first when its checkpoint was
    saved but the kill came before its validation finished (mmengine saves the epoch checkpoint
    *before* validating, and on resume would skip that validation, losing its best checkpoint).
    """

    priority = "LOWEST"

    def __init__(self, show_bar: bool = True) -> None:
        self.show_bar = show_bar
        self.bar: Any = None
        self.iter_seconds: list[float] = []
        self.val_history: list[dict[str, Any]] = []
        self._t0 = 0.0

    def before_train(self, runner: Any) -> None:
        from mmengine.dist import is_main_process
        from tqdm import tqdm

        if getattr(runner, "_resume", False) and runner.epoch > 0:
            _rebase_checkpoint_paths(runner)
            self._catch_up_validation(runner)
        if self.show_bar and is_main_process():         # one bar for a torchrun training: rank 0's
            self.bar = tqdm(total=runner.max_iters, initial=runner.iter, desc="train", unit="it", dynamic_ncols=True)

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self._t0 = time.perf_counter()

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self.iter_seconds.append(time.perf_counter() - self._t0)
        if self.bar is not None:
            loss = (outputs or {}).get("loss")
            value = float(loss.item() if hasattr(loss, "item") else loss) if loss is not None else None
            self.bar.set_postfix(epoch=runner.epoch + 1, loss=f"{value:.3f}" if value is not None else "-")
            self.bar.update(1)

    def after_val_epoch(self, runner: Any, metrics: dict | None = None) -> None:
        self.val_history.append({"epoch": runner.epoch, **{k: float(v) for k, v in (metrics or {}).items()
                                                          if isinstance(v, (int, float))}})
        # what a sweep watching this run reads to prune it (pipeline.sweep); atomic, so never torn.
        # Every rank holds the same (broadcast) metrics; rank 0 writes them, as it writes the checkpoints.
        from mmengine.dist import is_main_process

        if is_main_process():
            atomic.write_json(f"{runner.work_dir}/{VAL_HISTORY}", self.val_history)

    def _catch_up_validation(self, runner: Any) -> None:
        """Resumed at epoch ``runner.epoch``: take back the history of the epochs before, and run the
        validation of that epoch when the interrupted attempt did not finish it."""
        import json

        path = Path(runner.work_dir) / VAL_HISTORY
        try:
            history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        except ValueError:
            history = []
        self.val_history = [h for h in history if isinstance(h, dict) and h.get("epoch", 0) <= runner.epoch]
        loop, epoch = runner.train_loop, runner.epoch
        due = runner.val_loop is not None and epoch >= loop.val_begin and (
            epoch % loop.val_interval == 0 or epoch == loop.max_epochs)
        if due and not any(h.get("epoch") == epoch for h in self.val_history):
            runner.logger.info(f"resumed at epoch {epoch}, whose validation did not finish: validating it first")
            runner.val_loop.run()

    def after_train(self, runner: Any) -> None:
        if self.bar is not None:
            self.bar.close()
