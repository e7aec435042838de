"""Automatic registration on rigs it was not tuned on, and the check that refuses a bad estimate (#14)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks._registration_rigs import random_rig
from benchmarks.registration_msrs import WIDE_SIZE
from registration.homography import grid_error
from registration.registry import HomographyEntry, assess_entry, load_registry, save_entry, threshold_note
from registration.robust import estimate_robust

RGB, TH = (320, 256), (256, 208)


def _generated(seed: int, n: int, H: np.ndarray | None = None) -> tuple[list, np.ndarray]:
    """``n`` synthetic pairs (data.synthetic's renderer) seen through a random plausible rig."""
    from data.synthetic_render import Renderer

    if H is None:
        G, _ = random_rig(np.random.default_rng(seed), TH, RGB)
        H = np.linalg.inv(G)
        H /= H[2, 2]
    r = Renderer(seed, RGB, TH, H, 0.5, ("person", "car"), (2, 6))
    return [(f[0], f[1]) for f in (r.render(i) for i in range(n))], H


def _entry(H, **kw) -> HomographyEntry:
    return HomographyEntry(H=np.asarray(H, dtype=np.float64), rgb_size=RGB, thermal_size=TH,
                           **{"method": "points_ransac", "error_px": 0.8, "error_kind": "holdout", **kw})


@pytest.mark.parametrize("seed", [0, 2])
def test_recovers_a_random_rig_on_generated_pairs(seed: int) -> None:
    """No starting matrix given: the identity-ish start is tens of px off, the estimate within 1.5 px, and OK."""
    pairs, H_true = _generated(seed, 5)
    e = estimate_robust(pairs)
    assert grid_error(np.diag([TH[0] / RGB[0], TH[1] / RGB[1], 1.0]), H_true, RGB, TH) > 15
    assert grid_error(e.H, H_true, RGB, TH) <= 1.5
    assert e.error_kind == "heldout_pairs" and e.holdout_error_px is not None and e.n_inliers >= 4
    assert assess_entry(_entry(e.H, method=e.method, error_px=e.error_px, error_kind=e.error_kind,
                               heldout_error_px=e.holdout_error_px)).status == "ok"


def test_pairs_of_two_rigs_give_an_estimate_the_check_refuses() -> None:
    """Inconsistent pairs (two rigs 12 px apart mixed up) are never 'OK': the held-out error shows it."""
    a, H = _generated(3, 3)
    H2 = np.array([[1.0, 0.0, 12.0], [0.0, 1.0, -8.0], [0.0, 0.0, 1.0]]) @ H
    b, _ = _generated(4, 3, H2)
    e = estimate_robust([a[0], b[0], a[1], b[1], a[2], b[2]])
    v = assess_entry(_entry(e.H, method=e.method, error_px=e.error_px, error_kind=e.error_kind,
                            heldout_error_px=e.holdout_error_px))
    assert v.refused, (e.holdout_error_px, e.per_pair)
    assert any("held-out error" in r for r in v.reasons)


def test_msrs20_random_rig_is_recovered_or_refused(msrs20: Path) -> None:
    """Real pairs re-projected by a random rig: far better than the start, and never OK when truly > 3 px.

    Measured (benchmarks/RESULTS.md): on real MSRS pairs the estimate lands a few px from the
    synthetic truth, which assumes the dataset's own alignment is exact (estimates on the original
    pairs are ~1-2 % off identity); so this test holds the check's promise, not the 1.5 px goal.
    """
    import cv2

    from registration.warp import warp_image

    G, _ = random_rig(np.random.default_rng(11))
    H_true = np.linalg.inv(G)
    H_true /= H_true[2, 2]
    rgb = sorted((msrs20 / "rgb").glob("*.png"))[::3][:6]
    pairs = [(warp_image(cv2.imread(str(p), cv2.IMREAD_COLOR), G, WIDE_SIZE),
              cv2.imread(str(msrs20 / "thermal" / p.name), cv2.IMREAD_GRAYSCALE)) for p in rgb]
    e = estimate_robust(pairs)
    err = grid_error(e.H, H_true, WIDE_SIZE, (640, 480))
    start = grid_error(np.diag([640 / WIDE_SIZE[0], 480 / WIDE_SIZE[1], 1.0]), H_true, WIDE_SIZE, (640, 480))
    assert err < 8.0 and start > 30, (err, start)
    v = assess_entry(HomographyEntry(H=e.H, rgb_size=WIDE_SIZE, thermal_size=(640, 480), method=e.method,
                                     error_px=e.error_px, error_kind=e.error_kind, heldout_error_px=e.holdout_error_px))
    assert v.refused or err <= 3.0, (err, e.holdout_error_px)


def test_assess_entry_rules_and_registry_roundtrip(tmp_path: Path) -> None:
    H = np.array([[0.8, 0.0, 2.0], [0.0, 0.8, 1.0], [0.0, 0.0, 1.0]])
    assert assess_entry(_entry(H)).status == "ok"
    wrong = assess_entry(_entry(H, error_px=12.0))
    assert wrong.refused and "12.00 px" in wrong.reasons[0] and "3 px threshold" in wrong.reasons[0]
    assert assess_entry(_entry(H, error_px=12.0), max_error_px=20).status == "ok"
    # the old automatic estimate: a per-pair spread is not an accuracy (23 px, and even 1 px)
    for spread in (23.2, 1.0):
        assert assess_entry(_entry(H, method="auto_ecc_gradient", error_px=spread, error_kind="per_pair_spread")).refused
    ho = assess_entry(_entry(H, method="auto_search_joint_ecc", error_px=5.0, error_kind="heldout_pairs", heldout_error_px=5.0))
    assert ho.refused and any("held-out" in r for r in ho.reasons)
    assert assess_entry(_entry(H, error_px=None, error_kind="")).status == "unverified"
    assert threshold_note(3.0, 25.0) == "3 px = 12% of the median box size (25.0 px)"
    # heldout_error_px survives the registry; files without it (older ones) load as None
    save_entry(tmp_path, "rig", _entry(H, method="auto_search_joint_ecc", heldout_error_px=1.25))
    assert "heldout_error_px: 1.25" in (tmp_path / "rig.yaml").read_text()
    assert load_registry(tmp_path, "rig")[0].heldout_error_px == 1.25
    assert all(e.heldout_error_px is None for e in load_registry(None, "msrs"))


def test_register_check_refuses_a_wrong_entry(tmp_path: Path, capsys) -> None:
    from rgb2thermal_cli.main import main

    H = np.array([[0.8, 0.0, 2.0], [0.0, 0.8, 1.0], [0.0, 0.0, 1.0]])
    save_entry(tmp_path, "good", _entry(H))
    save_entry(tmp_path, "bad", _entry(H, method="auto_ecc_gradient", error_px=23.2, error_kind="per_pair_spread"))
    assert main(["register", "check", "--version", "good", "--registry", str(tmp_path)]) == 0
    assert "OK good 320x256" in capsys.readouterr().out
    assert main(["register", "check", "--version", "bad", "--registry", str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert "REFUSED bad 320x256" in cap.out
    assert "23.20 px" in cap.err and "--points" in cap.err and "Traceback" not in cap.err
    assert main(["register", "check", "--version", "bad", "--registry", str(tmp_path), "--max-error-px", "1"]) == 2
    assert main(["register", "check", "--version", "good", "--registry", str(tmp_path), "--max-error-px", "0"]) == 2


def test_register_estimate_from_an_index_records_the_heldout_error(tmp_path: Path, capsys) -> None:
    """What ``register estimate --index`` runs: a random rig's synthetic pairs -> an entry with its held-out error."""
    from data.adapters.folder import build_index
    from data.synthetic import generate
    from rgb2thermal_cli.main import main

    G, _ = random_rig(np.random.default_rng(7), TH, RGB)
    H_true = np.linalg.inv(G)
    generate(tmp_path / "rig7", 5, seed=7, homography=H_true / H_true[2, 2], version="rig7", progress=False)
    idx = build_index(tmp_path / "rig7", "rig7", tmp_path / "index", progress=False)
    reg = tmp_path / "registry"
    assert main(["register", "estimate", "--version", "rig7", "--index", str(idx.path), "--registry", str(reg)]) == 0
    assert "auto_search_joint_ecc" in capsys.readouterr().out
    (e,) = load_registry(reg, "rig7")
    assert e.method == "auto_search_joint_ecc" and e.error_kind == "heldout_pairs" and e.heldout_error_px is not None
    assert e.extra["pairs_used"] >= 4 and grid_error(e.H, H_true, RGB, TH) <= 1.5
    assert main(["register", "check", "--index", str(idx.path), "--registry", str(reg)]) == (2 if assess_entry(e).refused else 0)
    assert "median box size" in capsys.readouterr().out
