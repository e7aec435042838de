"""The homography registry: one human-readable YAML file per dataset version.

Why: FLIR v1 and v2 need different RGB->thermal matrices, and within one version the RGB
frames come in several resolutions, each needing its own matrix. Keeping them in reviewable
text files (``<registry_dir>/<version>.yaml``, default ``registration/homographies/``), keyed by
version *and* RGB resolution, makes "which matrix did this image get" a lookup instead of a
convention someone has to remember, and lets a diff show when a matrix changed.

File format (``H_rgb_to_thermal`` maps continuous RGB pixel coordinates to thermal ones)::

    schema: rgb2thermal.homographies/1
    version: flir_v1
    entries:
    - rgb_size: [1800, 1600]          # (width, height) — the lookup key within a version
      thermal_size: [640, 512]
      H_rgb_to_thermal:
      - [0.35, 0.0, -3.1]
      - ...
      method: points_ransac           # how it was obtained
      error_px: 0.82                  # measured mean error, thermal pixels
      error_kind: holdout             # what error_px measures
      heldout_error_px: 1.3           # optional: automatic estimates, error on pairs held out of the fit
      notes: "estimated from 24 clicked points on 6 frames"

Trust: :func:`assess_entry` is the one rule ``register check`` and the warp stage apply (an
entry whose measured or held-out error is above a threshold, default 3 thermal px, is refused).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import atomic
from core.errors import InputError
from core.versions import check_version_name

SCHEMA = "rgb2thermal.homographies/1"
DEFAULT_REGISTRY_DIR = Path(__file__).resolve().parent / "homographies"


@dataclass(frozen=True)
class HomographyEntry:
    """One registered RGB->thermal homography (sizes ``(width, height)``, error in thermal px)."""

    H: np.ndarray
    rgb_size: tuple[int, int]
    thermal_size: tuple[int, int]
    method: str
    error_px: float | None = None
    notes: str = ""
    version: str = ""
    error_kind: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    heldout_error_px: float | None = None

    def to_yaml_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "rgb_size": [int(v) for v in self.rgb_size],
            "thermal_size": [int(v) for v in self.thermal_size],
            "H_rgb_to_thermal": [[float(f"{v:.10g}") for v in row] for row in np.asarray(self.H, dtype=np.float64)],
            "method": self.method,
            "error_px": None if self.error_px is None else round(float(self.error_px), 4),
            "error_kind": self.error_kind,
        }
        if self.heldout_error_px is not None:      # absent in older files: they stay byte-identical
            d["heldout_error_px"] = round(float(self.heldout_error_px), 4)
        d["notes"] = self.notes
        if self.extra:
            d["extra"] = self.extra
        return d


def registry_path(registry_dir: str | Path | None, version: str) -> Path:
    check_version_name(version)
    return Path(registry_dir or DEFAULT_REGISTRY_DIR) / f"{version}.yaml"


def _size(v: Any, key: str, path: Path, i: int) -> tuple[int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v):
        raise InputError(f"entries[{i}].{key} must be [width, height] positive integers, got {v!r}", str(path),
                         "fix the YAML entry")
    return int(v[0]), int(v[1])


def load_registry(registry_dir: str | Path | None, version: str) -> list[HomographyEntry]:
    """All entries of one version (validated: sizes, a checked 3x3 matrix per entry)."""
    import yaml

    from registration.homography import check_homography

    path = registry_path(registry_dir, version)
    if not path.exists():
        raise InputError(f"no homography registered for dataset version '{version}'", str(path),
                         f"estimate one: rgb2thermal register estimate --version {version} ... "
                         f"(registered versions: {', '.join(list_versions(registry_dir)) or 'none'})")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc})", str(path), "fix the file's syntax") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("entries"), list):
        raise InputError(f"not a homography registry file (need schema: {SCHEMA} and an entries list)", str(path),
                         "write it with rgb2thermal register estimate, or follow registration/registry.py's format")
    if doc.get("version") != version:
        raise InputError(f"file says version {doc.get('version')!r} but is named for '{version}'", str(path),
                         "rename the file or fix its version field")
    out = []
    for i, e in enumerate(doc["entries"]):
        if not isinstance(e, dict) or "H_rgb_to_thermal" not in e:
            raise InputError(f"entries[{i}] lacks H_rgb_to_thermal", str(path), "fix the YAML entry")
        rgb_size = _size(e.get("rgb_size"), "rgb_size", path, i)
        thermal_size = _size(e.get("thermal_size"), "thermal_size", path, i)
        check_homography(e["H_rgb_to_thermal"], rgb_size, thermal_size, where=f"{path}: entries[{i}]")
        err = e.get("error_px")
        known = {"rgb_size", "thermal_size", "H_rgb_to_thermal", "method", "error_px", "notes", "error_kind", "extra",
                 "heldout_error_px"}
        ho = e.get("heldout_error_px")
        out.append(HomographyEntry(H=np.asarray(e["H_rgb_to_thermal"], dtype=np.float64), rgb_size=rgb_size,
                                   thermal_size=thermal_size, method=str(e.get("method", "unknown")),
                                   error_px=None if err is None else float(err), notes=str(e.get("notes") or ""),
                                   version=version, error_kind=str(e.get("error_kind") or ""),
                                   heldout_error_px=None if ho is None else float(ho),
                                   extra={**(e.get("extra") or {}), **{k: v for k, v in e.items() if k not in known}}))
    return out


def list_versions(registry_dir: str | Path | None) -> list[str]:
    d = Path(registry_dir or DEFAULT_REGISTRY_DIR)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def lookup(registry_dir: str | Path | None, version: str, rgb_size: tuple[int, int]) -> HomographyEntry:
    """The homography for images of ``version`` whose RGB frame is ``rgb_size`` ``(width, height)``.

    No guessing: a resolution without an entry is an error naming the registered ones (scaling
    another resolution's matrix is only right if the RGB camera's field of view is unchanged,
    which FLIR v1's mixed resolutions show is not a safe assumption).
    """
    entries = load_registry(registry_dir, version)
    key = (int(rgb_size[0]), int(rgb_size[1]))
    for e in entries:
        if e.rgb_size == key:
            return e
    raise InputError(f"no homography for RGB resolution {key[0]}x{key[1]} in version '{version}' "
                     f"(registered: {', '.join(f'{a}x{b}' for a, b in (e.rgb_size for e in entries)) or 'none'})",
                     str(registry_path(registry_dir, version)),
                     f"estimate one for this resolution: rgb2thermal register estimate --version {version} ...")


def save_entry(registry_dir: str | Path | None, version: str, entry: HomographyEntry) -> Path:
    """Add or replace (same RGB resolution) an entry in ``<registry_dir>/<version>.yaml`` (atomic)."""
    import yaml

    from registration.homography import check_homography

    check_homography(entry.H, entry.rgb_size, entry.thermal_size, where=f"homography for {version}")
    path = registry_path(registry_dir, version)
    entries = load_registry(registry_dir, version) if path.exists() else []
    entries = [e for e in entries if e.rgb_size != tuple(entry.rgb_size)] + [entry]
    entries.sort(key=lambda e: e.rgb_size)
    doc = {"schema": SCHEMA, "version": version, "entries": [e.to_yaml_dict() for e in entries]}
    text = ("# RGB->thermal homographies for dataset version '" + version + "' (one entry per RGB resolution).\n"
            "# H maps continuous RGB pixel coordinates ((0,0) = top-left image corner) to thermal ones; sizes are\n"
            "# [width, height]; error_px is in thermal pixels. Written by rgb2thermal register estimate.\n")
    text += yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)
    return atomic.write_text(path, text)


#: Default largest trusted error of a registry entry, thermal pixels (``register check --max-error-px``,
#: ``warp.max_homography_error_px``).
DEFAULT_MAX_ERROR_PX = 3.0


@dataclass(frozen=True)
class EntryAssessment:
    """Whether an entry may be used: ``status`` is ``ok``, ``refused`` or ``unverified`` (no error known).

    ``reasons``: one sentence per problem; ``errors``: the measured errors looked at (thermal px).
    """

    status: str
    reasons: list[str]
    errors: dict[str, float]
    max_error_px: float

    @property
    def refused(self) -> bool:
        return self.status == "refused"


def assess_entry(entry: HomographyEntry, max_error_px: float = DEFAULT_MAX_ERROR_PX) -> EntryAssessment:
    """The one trust rule for registry entries (thermal pixels; see module doc).

    Refused: a measured error (``error_px``, whatever its kind) or the held-out error above
    ``max_error_px``; an automatic estimate without a held-out error (older automatic entries
    recorded only the spread between per-pair estimates, which is not an accuracy: one such entry
    was 10.7 px off while its check said OK). Unverified (allowed, warned about): no error at all.
    """
    errors = {k: float(v) for k, v in (("error_px", entry.error_px), ("heldout_error_px", entry.heldout_error_px))
              if v is not None}
    reasons = [f"{k} {v:.2f} px ({entry.error_kind or 'unknown kind'}) is above the {max_error_px:g} px threshold"
               if k == "error_px" else f"held-out error {v:.2f} px is above the {max_error_px:g} px threshold"
               for k, v in errors.items() if not v <= max_error_px]
    if entry.method.startswith("auto") and entry.heldout_error_px is None:
        reasons.append(f"automatic estimate ({entry.method}) without a held-out error: its {entry.error_kind or 'error'} "
                       "is not an accuracy")
    if reasons:
        return EntryAssessment("refused", reasons, errors, max_error_px)
    if not errors:
        return EntryAssessment("unverified", ["no measured error recorded"], errors, max_error_px)
    return EntryAssessment("ok", [], errors, max_error_px)


def threshold_note(max_error_px: float, median_box_px: float | None) -> str:
    """``"3 px = 12% of the median box size (25.0 px)"``: the threshold against what it moves."""
    if not median_box_px:
        return f"{max_error_px:g} px"
    return f"{max_error_px:g} px = {max_error_px / median_box_px:.0%} of the median box size ({median_box_px:.1f} px)"
