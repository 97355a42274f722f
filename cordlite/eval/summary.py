"""The summary of one `cordlite eval` run: accuracies per subset, the gap, the gap reduction
against a baseline run, and the files a person reads (summary.json, summary.md, accuracy.png).

    summary = summarize(rows, subsets, settings)            # rows: responses.jsonl, scored
    summary["baseline"] = baseline_report(load_baseline(PATH), summary, PATH)
    write_outputs(OUT, summary)

Pure bookkeeping over scored rows; answering and scoring are cordlite.eval.evaluate's.
"""

from __future__ import annotations

import json
from pathlib import Path

from cordlite.eval.gap import accuracy, compare_to_baseline
from cordlite.eval.io import EvalError
from cordlite.eval.report import accuracy_bars
from cordlite.files import md_table, write_text_atomic
from cordlite.judge.conventions import EXTRACTION_MODES


def run_record(settings: dict, origin: dict | None = None) -> dict:
    """The decoding, prompt and judge a run answers with, as summary.json records them."""
    greedy = settings["temperature"] == 0
    origin = origin or {}
    return {
        "decoding": {"greedy": greedy, "temperature": None if greedy else settings["temperature"],
                     "top_p": None if greedy else settings["top_p"], "max_new_tokens": settings["max_new_tokens"],
                     "seed": settings["seed"], "batch_size": settings["batch_size"],
                     "quantization": settings["quantization"]},
        "prompt": {"instruction": settings["instruction"], "system_prompt": settings["system_prompt"]},
        "settings_from": {k: origin[k] for k in ("instruction", "max_new_tokens") if k in origin},
        "judge": {"mode": settings["judge"]},
    }


# What a baseline must share with the run it is compared with (seed and batch size do not change a
# greedy answer; the manifest and subsets are checked by baseline_report).
_COMPARED = {"decoding": ("greedy", "temperature", "top_p", "max_new_tokens", "quantization"),
             "prompt": ("instruction", "system_prompt"), "judge": ("mode",)}


def baseline_differences(base: dict, mine: dict) -> list[tuple[str, object, object]]:
    """(section.key, baseline's value, this run's) for each setting in _COMPARED in which a baseline
    summary differs from this run's record (run_record or a summary); keys the baseline lacks count
    as the same (summaries written before the key existed)."""
    return [(f"{section}.{k}", base[section][k], mine[section][k])
            for section, keys in _COMPARED.items() for k in keys
            if k in (base.get(section) or {}) and base[section][k] != mine[section][k]]


def baseline_mismatch(base: dict, settings: dict) -> list[str]:
    """The settings in which a baseline summary differs from this run's ("section.key: base -> this")."""
    return [f"{key}: baseline {b!r}, this run {m!r}" for key, b, m in baseline_differences(base, run_record(settings))]


def summarize(rows: list[dict], subsets: dict[str, str], settings: dict, origin: dict | None = None) -> dict:
    """Accuracies per subset (percent), their average over subsets, and all items together.
    `origin` says where the instruction and max_new_tokens came from (evaluate.resolve_prompt)."""
    names = sorted(set(subsets.values()))
    with_text = {r["id"] for r in rows if r["modality"] == "text"}
    table = {}
    for name in names:
        ids = {i for i, sub in subsets.items() if sub == name}
        mine = [r for r in rows if r["id"] in ids]
        n, tn = len(ids), len(ids & with_text)
        tc = sum(bool(r["correct"]) for r in mine if r["modality"] == "text")
        ac = sum(bool(r["correct"]) for r in mine if r["modality"] == "audio")
        # An audio-only subset (no text view: MMAU) has an audio accuracy and nothing else.
        table[name] = {"n": n, "text_n": tn, "text_correct": tc, "audio_correct": ac, "text_acc": accuracy(tc, tn),
                       "audio_acc": accuracy(ac, n), "gap": accuracy(tc, n) - accuracy(ac, n) if tn == n else None}
    n_all = len(subsets)
    tc = sum(t["text_correct"] for t in table.values())
    ac = sum(t["audio_correct"] for t in table.values())
    # The overall gap compares the two views on the items that have both.
    ac_both = sum(bool(r["correct"]) for r in rows if r["modality"] == "audio" and r["id"] in with_text)
    n_both = len(with_text)

    def mean(key: str) -> float | None:
        values = [t[key] for t in table.values() if t[key] is not None]
        return sum(values) / len(values) if values else None

    avg = {k: mean(k) for k in ("text_acc", "audio_acc", "gap")}
    record = run_record(settings, origin)
    return {
        "model": settings["model"], "adapter": settings["adapter"], "manifest": settings["manifest"],
        "n_items": n_all, "text_acc": accuracy(tc, n_both), "audio_acc": accuracy(ac, n_all),
        "gap": accuracy(tc, n_both) - accuracy(ac_both, n_both) if n_both else None,
        "audio_only_subsets": [k for k, t in table.items() if t["text_n"] == 0],
        "average_over_subsets": avg, "subset_field": settings["subset_field"], "subsets": table,
        "decoding": record["decoding"], "prompt": record["prompt"], "settings_from": record["settings_from"],
        "judge": {"mode": settings["judge"], "model": None if settings["judge"] == "rules" else settings["judge_model"],
                  "by_rules": sum(r["judged_by"] == "rules" for r in rows),
                  "by_llm": sum(r["judged_by"] == "llm" for r in rows),
                  "by_benchmark_rule": {m: sum(r["judged_by"] == m for r in rows) for m in EXTRACTION_MODES[1:]
                                        if any(r["judged_by"] == m for r in rows)},
                  "guessed": sum(bool(r.get("guessed")) for r in rows),
                  "unparseable": sum(bool(r.get("judge_unparseable")) for r in rows)},
        "counts": {"responses": len(rows),
                   "truncated_text": sum(bool(r["truncated"]) for r in rows if r["modality"] == "text"),
                   "truncated_audio": sum(bool(r["truncated"]) for r in rows if r["modality"] == "audio"),
                   "no_final_answer": sum(not r.get("has_final_answer") for r in rows)},
        "baseline": None,
    }


def load_baseline(path: str) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"--baseline {path}: not found; pass the summary.json of an eval of the base model") from None
    except ValueError as e:
        raise EvalError(f"--baseline {path}: not valid JSON ({e})") from None
    subsets = data.get("subsets") if isinstance(data, dict) else None
    if not isinstance(subsets, dict) or not subsets:
        raise EvalError(f"--baseline {path}: no `subsets` mapping; pass a summary.json written by cordlite eval")
    for name, row in subsets.items():
        if (not isinstance(row, dict) or not isinstance(row.get("audio_acc"), (int, float))
                or not isinstance(row.get("text_acc"), (int, float, type(None)))):
            raise EvalError(f"--baseline {path}: subsets.{name} needs a numeric audio_acc and a numeric (or null: "
                            "audio-only) text_acc")
    return data


def baseline_report(base: dict, summary: dict, path: str) -> dict:
    """Gap reduction against the base run (method doc: Delta = Acc_text(base) - Acc_audio(method))."""
    # Audio-only subsets (no base text accuracy, e.g. MMAU) are reported, not averaged into the gap.
    audio_only = sorted(k for k, v in base["subsets"].items() if v.get("text_acc") is None)
    bs = {k: v for k, v in base["subsets"].items() if k not in audio_only}
    ms = {k: v for k, v in summary["subsets"].items() if k not in audio_only}
    try:
        report = compare_to_baseline({k: v["text_acc"] for k, v in bs.items()},
                                     {k: v["audio_acc"] for k, v in bs.items()},
                                     {k: v["audio_acc"] for k, v in ms.items()})
    except ValueError as e:
        raise EvalError(f"--baseline {path}: {e} (this run: {sorted(ms)}, baseline: {sorted(bs)}); use the same "
                        "manifest and --subset-field") from None
    # Refused before the run unless --allow-baseline-mismatch; listed here when allowed.
    warnings = [f"{key} differs: baseline {b!r}, this run {m!r}" for key, b, m in baseline_differences(base, summary)]
    if base.get("manifest") not in (None, summary["manifest"]):
        warnings.append(f"manifest differs: baseline {base['manifest']!r}, this run {summary['manifest']!r}")
    missing = sorted(set(bs) ^ set(ms))
    if missing:
        warnings.append(f"subsets in only one of the runs are left out: {missing}")
    if report["gap_reduction"] is None:
        warnings.append("the baseline has no positive average gap: gap reduction is undefined")
    audio_only_acc = {k: {"base_audio_acc": base["subsets"][k]["audio_acc"],
                          "method_audio_acc": summary["subsets"].get(k, {}).get("audio_acc")} for k in audio_only}
    return {"path": path, "model": base.get("model"), "adapter": base.get("adapter"), **report,
            "audio_only": audio_only_acc, "warnings": warnings}


def summary_markdown(s: dict) -> str:
    d = s["decoding"]
    dec = "greedy" if d["greedy"] else f"temperature {d['temperature']}, top_p {d['top_p']}"
    lines = [
        "# Audio vs text accuracy\n",
        f"- model: `{s['model']}`" + (f", adapter: `{s['adapter']}`" if s["adapter"] else ""),
        f"- manifest: `{s['manifest']}` ({s['n_items']} items, subsets by `{s['subset_field']}`)",
        f"- decoding: {dec}, max_new_tokens {d['max_new_tokens']}, seed {d['seed']}, weights {d['quantization']}",
        f"- instruction: {s['prompt']['instruction']!r}"
        + (f" (from {s['settings_from']['instruction']})" if (s.get("settings_from") or {}).get("instruction") else ""),
        f"- judge: {s['judge']['mode']}" + (f" ({s['judge']['model']})" if s["judge"]["model"] else "")
        + f"; decided by rules {s['judge']['by_rules']}, by LLM {s['judge']['by_llm']}, "
          f"unparseable {s['judge']['unparseable']}"
        + "".join(f"; by the {m} rule {k}" for m, k in (s["judge"].get("by_benchmark_rule") or {}).items())
        + (f" ({s['judge']['guessed']} answer(s) without a letter, guessed as VoiceBench does)"
           if s["judge"].get("guessed") else ""),
        f"- truncated answers: text {s['counts']['truncated_text']}, audio {s['counts']['truncated_audio']}; "
        f"no final answer found: {s['counts']['no_final_answer']}\n",
        "Accuracy in %; gap = text - audio (over all items: on the items that have both views).\n",
    ]
    rows = [[k, v["n"], v["text_acc"], v["audio_acc"], v["gap"]] for k, v in s["subsets"].items()]
    if s.get("audio_only_subsets"):
        lines.append(f"Audio-only subsets (no text view; audio accuracy only, not in the gap): "
                     f"{', '.join(s['audio_only_subsets'])}.\n")
    avg = s["average_over_subsets"]
    rows.append(["**average over subsets**", s["n_items"], avg["text_acc"], avg["audio_acc"], avg["gap"]])
    rows.append(["**all items**", s["n_items"], s["text_acc"], s["audio_acc"], s["gap"]])
    lines.append(md_table(["subset", "n", "text acc", "audio acc", "gap"], rows))
    b = s.get("baseline")
    if b:
        lines.append(f"\n## Gap reduction against `{b['path']}`\n")
        lines.append("Delta = Acc_text(base) - Acc_audio(this run) per subset, averaged over subsets; "
                     "reduction = (AVG_base - AVG_this) / AVG_base.\n")
        rows = [[k, v["base_text_acc"], v["base_audio_acc"], v["method_audio_acc"], v["gap_base"], v["gap_method"]]
                for k, v in b["per_benchmark"].items()]
        rows.append(["**AVG**", None, None, None, b["avg_gap_base"], b["avg_gap_method"]])
        lines.append(md_table(["subset", "base text", "base audio", "this audio", "gap base", "gap this run"], rows))
        for k, v in (b.get("audio_only") or {}).items():
            lines.append(f"\n{k} (audio only): base audio accuracy {v['base_audio_acc']:.2f}, this run "
                         + ("-" if v["method_audio_acc"] is None else f"{v['method_audio_acc']:.2f}"))
        red = b["gap_reduction"]
        lines.append(f"\n**Gap reduction: {'undefined' if red is None else f'{100 * red:.1f}%'}** "
                     f"(average gap {b['avg_gap_base']:.2f} -> {b['avg_gap_method']:.2f})\n")
        lines += [f"- warning: {w}" for w in b["warnings"]]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, summary: dict) -> None:
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "summary.md", summary_markdown(summary))
    names = list(summary["subsets"])
    base_text = None
    if summary.get("baseline"):
        per = summary["baseline"]["per_benchmark"]
        base_text = [per[k]["base_text_acc"] if k in per else None for k in names]
    accuracy_bars(names, [summary["subsets"][k]["text_acc"] for k in names],
                  [summary["subsets"][k]["audio_acc"] for k in names], out / "accuracy.png", base_text,
                  title=f"{_short_name(summary)}: audio vs text accuracy")


def _short_name(summary: dict) -> str:
    if summary["adapter"]:
        p = Path(summary["adapter"])
        return f"{p.parent.name}/{p.name}"  # RUN/adapter: the run's name says which method
    return Path(summary["model"]).name
