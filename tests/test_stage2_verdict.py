"""The quickstart summary says whether Stage 2 moved the headline share past noise."""

from __future__ import annotations

from cellduality.pipeline.summary import stage2_verdicts


def _comparison(sft: float, duality: float, n: int) -> dict:
    share = {"SFT-only": {"mean": sft}, "duality RL": {"mean": duality}}
    count = {"SFT-only": {"mean": float(n)}, "duality RL": {"mean": float(n)}}
    return {"summary": {"annotation": {"accuracy": share, "n": count},
                        "generation": {"knn@10": share, "n": count}}}


def test_small_differences_on_few_cells_are_reported_as_noise():
    lines = stage2_verdicts(_comparison(0.633, 0.65, 60))
    assert len(lines) == 2 and all("no measurable change" in line for line in lines)
    assert "+1.7 points on 60 test examples (noise band ±18)" in lines[0] and "kNN@10" in lines[1]


def test_a_large_difference_on_many_cells_is_a_gain_or_a_loss():
    assert "a gain beyond noise" in stage2_verdicts(_comparison(0.60, 0.70, 1000))[0]
    assert "a loss beyond noise" in stage2_verdicts(_comparison(0.70, 0.60, 1000))[0]


def test_tasks_without_a_share_or_a_count_get_no_verdict():
    comparison = _comparison(0.6, 0.7, 100)
    del comparison["summary"]["annotation"]["n"]
    comparison["summary"]["perturbation"] = {"scfid": {"SFT-only": {"mean": 80.0}, "duality RL": {"mean": 70.0}}}
    lines = stage2_verdicts(comparison)
    assert len(lines) == 1 and lines[0].startswith("generation")
