"""Accuracy, audio-text gap and gap reduction, as the CORD paper defines them. PURE.

Accuracies are percentages (0-100) as in the paper's Table 1. Per benchmark (here: per subset
of a manifest) the gap of a method is measured against the TEXT accuracy of the BASE model:

    Delta(method) = Acc_text(base) - Acc_audio(method)
    AVG(method)   = mean of Delta over benchmarks
    reduction     = (AVG(base) - AVG(method)) / AVG(base)      (a ratio of averages)

Qwen2-Audio (Table 1): AVG 15.25 for the base, 8.90 with CORD, a 41.6% reduction. The paper
reduces the two averages rounded to two decimals; from the unrounded accuracies it is 41.66%.
"""

from __future__ import annotations

from collections.abc import Mapping


def accuracy(correct: int, n: int) -> float | None:
    """Percentage correct, None for an empty set."""
    return 100.0 * correct / n if n else None


def average_gap(text_acc: Mapping[str, float], audio_acc: Mapping[str, float]) -> float:
    """Mean over benchmarks of text accuracy minus audio accuracy (same benchmarks in both)."""
    if set(text_acc) != set(audio_acc):
        raise ValueError(f"benchmarks differ: text {sorted(text_acc)} vs audio {sorted(audio_acc)}")
    if not text_acc:
        raise ValueError("no benchmarks to average over")
    return sum(text_acc[k] - audio_acc[k] for k in text_acc) / len(text_acc)


def gap_reduction(avg_gap_base: float, avg_gap_method: float) -> float | None:
    """Fraction of the base model's average gap that the method closed; None when the base has
    no positive gap (nothing to close, the ratio is meaningless)."""
    if avg_gap_base <= 0:
        return None
    return (avg_gap_base - avg_gap_method) / avg_gap_base


def compare_to_baseline(
    base_text: Mapping[str, float],
    base_audio: Mapping[str, float],
    method_audio: Mapping[str, float],
) -> dict:
    """Per-benchmark and average gaps of base and method, and the gap reduction, over the
    benchmarks present in both runs."""
    common = sorted(set(base_text) & set(base_audio) & set(method_audio))
    if not common:
        raise ValueError("the baseline and this run share no benchmark (subset) names")
    bt = {k: base_text[k] for k in common}
    avg_base = average_gap(bt, {k: base_audio[k] for k in common})
    avg_method = average_gap(bt, {k: method_audio[k] for k in common})
    return {
        "benchmarks": common,
        "per_benchmark": {k: {"base_text_acc": base_text[k], "base_audio_acc": base_audio[k],
                              "method_audio_acc": method_audio[k], "gap_base": base_text[k] - base_audio[k],
                              "gap_method": base_text[k] - method_audio[k]} for k in common},
        "avg_gap_base": avg_base,
        "avg_gap_method": avg_method,
        "gap_reduction": gap_reduction(avg_base, avg_method),
    }
