"""Gap and gap-reduction arithmetic against the CORD paper's Table 1 (arXiv 2601.16547)."""

from __future__ import annotations

import pytest

from cordlite.eval.gap import accuracy, average_gap, compare_to_baseline, gap_reduction

BENCH = ("MMSU", "OBQA", "GSM8K")
# Qwen2-Audio-7B-Instruct: implied base text accuracies, and audio accuracies per method.
QWEN_TEXT = dict(zip(BENCH, (44.46, 68.79, 40.47)))
QWEN_AUDIO = {
    "base": dict(zip(BENCH, (36.04, 51.20, 20.73))),
    "sft": dict(zip(BENCH, (36.47, 49.49, 33.68))),
    "forward_kl": dict(zip(BENCH, (36.77, 48.21, 36.05))),
    "cord": dict(zip(BENCH, (38.06, 52.77, 36.20))),
}


def test_accuracy_is_a_percentage():
    assert accuracy(3, 8) == 37.5
    assert accuracy(0, 0) is None


@pytest.mark.parametrize("method, avg", [("base", 15.25), ("sft", 11.36), ("forward_kl", 10.90), ("cord", 8.90)])
def test_qwen2audio_average_gaps(method: str, avg: float):
    # Delta = Acc_text(base) - Acc_audio(method); base: (8.42 + 17.59 + 19.74) / 3 = 15.25
    assert round(average_gap(QWEN_TEXT, QWEN_AUDIO[method]), 2) == avg


def test_cord_gap_reduction_is_41_6_percent():
    # The paper reduces the rounded averages: (15.25 - 8.90) / 15.25 = 0.41639...
    assert round(100 * gap_reduction(15.25, 8.90), 1) == 41.6
    # From the unrounded accuracies: (15.25 - 8.8967) / 15.25 = 0.4166
    r = compare_to_baseline(QWEN_TEXT, QWEN_AUDIO["base"], QWEN_AUDIO["cord"])
    assert r["avg_gap_base"] == pytest.approx(15.25, abs=1e-9)
    assert r["avg_gap_method"] == pytest.approx(26.69 / 3, abs=1e-9)
    assert r["gap_reduction"] == pytest.approx((15.25 - 26.69 / 3) / 15.25, abs=1e-12)
    assert abs(100 * r["gap_reduction"] - 41.6) < 0.1
    assert r["per_benchmark"]["GSM8K"]["gap_method"] == pytest.approx(40.47 - 36.20)


@pytest.mark.parametrize("base, method, pct", [
    (15.25, 11.36, 25.5), (15.25, 10.90, 28.5), (15.25, 8.90, 41.6),  # Qwen2-Audio SFT, FKL, CORD
    (10.86, 14.55, -34.0), (10.86, 9.72, 10.5), (10.86, 6.00, 44.8),  # Step-Audio-2-mini
])
def test_table1_reductions(base: float, method: float, pct: float):
    assert round(100 * gap_reduction(base, method), 1) == pct


def test_no_gap_means_no_reduction():
    assert gap_reduction(0.0, 1.0) is None
    assert gap_reduction(-2.0, 1.0) is None


def test_benchmarks_must_match():
    with pytest.raises(ValueError, match="benchmarks differ"):
        average_gap({"a": 1.0}, {"b": 1.0})
    # compare_to_baseline keeps the shared benchmarks only
    r = compare_to_baseline({"a": 50.0, "b": 60.0}, {"a": 40.0, "b": 40.0}, {"a": 45.0})
    assert r["benchmarks"] == ["a"] and r["avg_gap_base"] == 10.0 and r["gap_reduction"] == 0.5
