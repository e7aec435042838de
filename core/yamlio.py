"""Reading user YAML files (params.yaml, training specs) with errors that say what and how to fix."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from core.errors import InputError


def read_mapping(path: str | os.PathLike[str], what: str, fix: str) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping; ``what`` names it in errors, ``fix`` says where to look."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise InputError(f"{what} file not found", str(p), "check the path") from None
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc})", str(p), "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} must be a mapping of fields", str(p), fix)
    return data
