"""Small helpers around MMDetection: bundled configs, registries, model building.

``mmdet`` is imported lazily so that ``rgb2thermal --help`` stays fast.
"""
from __future__ import annotations

import logging

import os
from pathlib import Path
from typing import Any


def mmdet_config_dir() -> Path:
    """Folder of the configs that ship inside the mmdet wheel (``mmdet/.mim/configs``)."""
    import mmdet

    path = Path(mmdet.__file__).parent / ".mim" / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"mmdet's bundled configs are missing at {path}; reinstall mmdet==3.3.0")
    return path


def resolve_base_config(name_or_path: str | os.PathLike[str]) -> Path:
    """A config path, or a bundled config name such as ``yolox_tiny_8xb8-300e_coco``."""
    p = Path(name_or_path)
    if p.suffix == ".py" and p.is_file():
        return p.resolve()
    name = p.name if p.suffix == ".py" else f"{p.name}.py"
    matches = sorted(mmdet_config_dir().rglob(name))
    if not matches:
        raise FileNotFoundError(
            f"base model '{name_or_path}' is neither a config file nor a config bundled with mmdet "
            f"(looked for {name} under {mmdet_config_dir()}). Fix: pass a path to an mmdet .py config "
            f"or a bundled name such as yolox_tiny_8xb8-300e_coco or yolox_s_8xb8-300e_coco")
    return matches[0]


def register_mmdet() -> None:
    """Register mmdet's modules and make ``mmdet`` the default registry scope."""
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)


def load_config(name_or_path: str | os.PathLike[str]) -> Any:
    from mmengine.config import Config

    return Config.fromfile(str(resolve_base_config(name_or_path)))


def build_model(model_cfg: Any) -> Any:
    """Build a detector from a config's ``model`` section (random init unless it says otherwise)."""
    register_mmdet()
    from mmdet.registry import MODELS

    model = MODELS.build(model_cfg)
    _live_mmengine_logger()
    model.init_weights()
    return model


def _live_mmengine_logger() -> None:
    """Make sure mmengine's *current* logger can be written to before ``init_weights``.

    Why: ``init_weights`` writes its report to the file handlers of mmengine's current logger.
    After a training in this process (the Prefect door and sweeps run several steps in one
    process) that is the finished Runner's logger, whose log file is closed (``stream`` None),
    and ``init_weights`` failed with ``'NoneType' object has no attribute 'write'``. Then a new
    console-only logger is made current; otherwise nothing changes.
    """
    import uuid

    from mmengine.logging import MMLogger

    if not MMLogger._instance_dict:
        return
    current = MMLogger.get_current_instance()
    if any(isinstance(h, logging.FileHandler) and h.stream is None for h in current.handlers):
        MMLogger.get_instance(f"rgb2thermal-build-{uuid.uuid4().hex[:8]}", log_level="WARNING")
