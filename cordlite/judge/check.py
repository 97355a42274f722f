"""How far to trust a judge: its agreement with labelled answer pairs.

    cordlite judge-check PAIRS.jsonl --model Qwen/Qwen2.5-1.5B-Instruct [--mode llm] [--out DIR]
    cordlite judge-check PAIRS.jsonl --model Qwen/Qwen2-Audio-7B-Instruct --quantization nf4  # the `self` judge

PAIRS.jsonl holds one labelled pair per line:
  {"question": "...", "answer_a": "...", "answer_b": "...", "same": true, "choices": [...] (optional)}
`same` says whether the two answers reach the same final answer. The judge (rules, llm or
rules_then_llm, as in the recipe's `judge` section) decides every pair; the report gives accuracy,
the confusion counts (positive = "same"), precision, recall and the unparseable replies, which
count as "different". A Qwen2-Audio checkpoint given as --model is used in text mode: the same
judge as `judge.model: self` on that base (and the same cache keys).
Writes, with --out: judge_check.json, judge_check.md, verdicts.jsonl, judge_cache.jsonl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cordlite.files import md_table, write_text_atomic
from cordlite.judge.llm import JudgeError


@dataclass(frozen=True)
class JudgeCheckSettings:
    pairs: str
    mode: str = "llm"
    model: str = ""
    quantization: str = "none"
    device: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 16
    number_tolerance: float = 1e-6
    cache: str | None = None
    out: str | None = None


def read_pairs(path: str | Path) -> list[dict]:
    """Labelled pairs; every bad line is reported at once with its number and field."""
    path = Path(path)
    if not path.is_file():
        raise JudgeError(f"{path}: pairs file not found; write one JSON object per line with question, "
                        "answer_a, answer_b and same (true/false)")
    pairs, problems = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {lineno}: not valid JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {lineno}: expected a JSON object")
            continue
        bad = [k for k in ("question", "answer_a", "answer_b") if not isinstance(row.get(k), str)]
        if not isinstance(row.get("same"), bool):
            bad.append("same (true or false)")
        choices = row.get("choices")
        if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
            bad.append("choices (a list of strings or null)")
        if bad:
            problems.append(f"line {lineno}: missing or wrong field(s) {', '.join(bad)}")
            continue
        pairs.append({**row, "id": str(row.get("id", lineno))})
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise JudgeError(f"{path}: {len(problems)} bad line(s):\n  " + "\n  ".join(shown))
    if not pairs:
        raise JudgeError(f"{path}: no pairs")
    return pairs


def confusion(labels: list[bool], predicted: list[bool], unparseable: list[bool]) -> dict:
    """Confusion counts with "same" as the positive class. PURE."""
    tp = sum(l and p for l, p in zip(labels, predicted, strict=True))
    fp = sum((not l) and p for l, p in zip(labels, predicted))
    fn = sum(l and not p for l, p in zip(labels, predicted))
    tn = sum((not l) and not p for l, p in zip(labels, predicted))
    n = len(labels)
    return {
        "n": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": (tp + tn) / n if n else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "unparseable": sum(unparseable),
        "unparseable_labelled_same": sum(u and l for u, l in zip(unparseable, labels)),
    }


def _judge(s: JudgeCheckSettings):
    from cordlite.config import JudgeConfig, ModelConfig, QuantizationConfig, TrainConfig
    from cordlite.judge.rewards import build_judge
    from cordlite.models.runtime import resolve_runtime

    cfg = JudgeConfig(mode=s.mode, number_tolerance=s.number_tolerance, model=s.model or "self",
                      quantization=s.quantization, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                      cache=s.cache)
    if s.mode == "rules":
        return build_judge(cfg)
    if not s.model or s.model == "self":
        raise JudgeError("--model: required for --mode llm / rules_then_llm; give the judge model's path or hub id "
                        "(for the `self` judge, the Qwen2-Audio base you train)")
    if s.device == "cpu" and s.quantization == "int8":
        raise JudgeError("--quantization int8 needs CUDA in bitsandbytes; use nf4 or none on CPU")
    try:
        rt = resolve_runtime(ModelConfig(name_or_path=s.model, device=s.device), QuantizationConfig(mode=s.quantization),
                             TrainConfig())
    except RuntimeError as e:
        raise JudgeError(str(e).replace("model.device", "--device")) from None
    return build_judge(cfg, rt=rt, cache_path=Path(s.out) / "judge_cache.jsonl" if s.out else None)


def run_judge_check(s: JudgeCheckSettings) -> dict:
    from cordlite.judge.rewards import JudgeItem

    pairs = read_pairs(s.pairs)
    if s.out:
        Path(s.out).mkdir(parents=True, exist_ok=True)
    judge = _judge(s)
    verdicts, stats = judge.decide([JudgeItem(p["question"], p["answer_a"], p["answer_b"], p.get("choices"))
                                    for p in pairs])
    result = {
        "pairs": s.pairs, "mode": s.mode, "model": None if s.mode == "rules" else s.model,
        "quantization": None if s.mode == "rules" else s.quantization,
        **confusion([p["same"] for p in pairs], [v.same for v in verdicts], [v.unparseable for v in verdicts]),
        "decided_by_rules": int(stats["judge_by_rules"]), "decided_by_llm": int(stats["judge_by_llm"]),
        "cache_hits": int(stats["judge_cache_hits"]),
        "generate_calls": judge.llm.generate_calls if judge.llm is not None else 0,
    }
    if s.out:
        out = Path(s.out)
        rows = [{"id": p["id"], "same": p["same"], "judged_same": v.same, "agree": p["same"] == v.same,
                 "by": v.by, "reply": v.reply, "unparseable": v.unparseable} for p, v in zip(pairs, verdicts)]
        write_text_atomic(out / "verdicts.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_text_atomic(out / "judge_check.json", json.dumps(result, indent=2) + "\n")
        write_text_atomic(out / "judge_check.md", markdown(result))
    return result


def markdown(r: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    judge = r["mode"] + (f" ({r['model']}, {r['quantization']})" if r["model"] else "")
    return "\n".join([
        f"# Judge check: {judge}\n",
        f"{r['n']} labelled pairs from `{r['pairs']}`; positive = the two answers reach the same final answer.\n",
        md_table(["", "judged same", "judged different"],
                 [["labelled same", r["tp"], r["fn"]], ["labelled different", r["fp"], r["tn"]]]),
        f"\n- accuracy {pct(r['accuracy'])}, precision {pct(r['precision'])}, recall {pct(r['recall'])}",
        f"- unparseable replies: {r['unparseable']} (counted as different; {r['unparseable_labelled_same']} of "
        "them were labelled same)",
        f"- decided by rules {r['decided_by_rules']}, by the LLM {r['decided_by_llm']} "
        f"({r['cache_hits']} from the cache, {r['generate_calls']} generate calls)\n",
    ])
