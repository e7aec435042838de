"""A generated paired dataset with its homography registry: what the pipeline's ``data`` step makes
from ``data.synthetic`` (the demo and the tests), in one function every door calls.

Why a registry beside the frames: the generator knows the exact RGB->thermal homography, so the
warp step uses it (``method: synthetic_known``, error 0 px) instead of estimating one.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from data.synthetic import generate
from registration.registry import HomographyEntry, save_entry


class SyntheticSettings(BaseModel):
    """The deterministic synthetic paired-scene generator (demo and tests). Sizes ``(width, height)`` px."""

    model_config = ConfigDict(extra="forbid")

    n_pairs: int = Field(default=40, ge=2)
    seed: int = 0
    rgb_size: tuple[int, int] = (320, 256)
    thermal_size: tuple[int, int] = (256, 208)
    night_fraction: float = Field(default=0.5, ge=0, le=1)
    night_hidden_people: float = Field(default=0.0, ge=0, le=1, description=(
        "share of night people drawn in thermal only (invisible in RGB and absent from the RGB labels), "
        "as most night people on real pairs are"))
    version: str = "synthetic"


def generate_dataset(s: SyntheticSettings, out: Path, classes: Sequence[str]) -> tuple[Path, Path]:
    """Generate ``s.n_pairs`` pairs into ``out/<version>`` and their homography into ``out/registry``.

    Args:
        s: the generator settings.
        out: the folder both go into (the data step's stage folder).
        classes: the target class names the labels use.

    Returns:
        (the dataset root, the registry folder).
    """
    info = generate(out / s.version, s.n_pairs, seed=s.seed, rgb_size=s.rgb_size, thermal_size=s.thermal_size,
                    night_fraction=s.night_fraction, night_hidden_people=s.night_hidden_people,
                    classes=list(classes), version=s.version)
    save_entry(out / "registry", s.version, HomographyEntry(
        H=info.homography, rgb_size=info.rgb_size, thermal_size=info.thermal_size, method="synthetic_known",
        error_px=0.0, error_kind="exact", notes="the generator's homography (exact by construction)"))
    return out / s.version, out / "registry"
