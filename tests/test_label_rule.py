"""The label rule of ``benchmarks/label_rule.py`` (how the demo's thermal-source thresholds were
chosen): per class, the highest threshold whose fused F1 is within 0.01 of the best."""
from __future__ import annotations

from benchmarks.label_rule import TOLERANCE, choose


def test_choose_takes_the_highest_threshold_near_the_best_f1_per_class():
    scores = {
        0.1: {"person": 0.460, "car": 0.700},
        0.3: {"person": 0.467, "car": 0.861},   # best for both classes
        0.5: {"person": 0.458, "car": 0.852},   # both 0.009 below the best -> within the tolerance
        0.7: {"person": 0.440, "car": 0.820},
    }
    assert TOLERANCE == 0.01
    assert choose(scores, ["person", "car"]) == {"person": 0.5, "car": 0.5}
    # person 0.458 at 0.5 is 0.009 below the best: kept; at 0.449 it would not be
    scores[0.5]["person"] = 0.449
    assert choose(scores, ["person", "car"])["person"] == 0.3


def test_choose_on_a_flat_curve_takes_the_highest_threshold():
    """A source whose F1 does not change with its threshold (the demo teacher barely sees thermal
    people: the fused set is the RGB side) -> the highest threshold, the fewest false boxes."""
    flat = {thr: {"person": 0.279} for thr in (0.05, 0.5, 0.9)}
    assert choose(flat, ["person"]) == {"person": 0.9}
