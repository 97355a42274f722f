"""Where the audio-text gap lives: per-token reverse KL along the model's own audio rollouts.

    cordlite diagnose MANIFEST --model BASE --out runs/diag_base [--adapter RUN/adapter] [--limit 32]

For each item, rollouts are sampled from the audio view (adapters on when --adapter is given),
and every token is scored under both views: D_t = KL(p(.|y<t, x_a) || p(.|y<t, x_t)) over the
whole vocabulary, with the text view scored by the base (adapters off), exactly the quantity
CORD's token-level loss weights (method doc, "Token level"). The paper's analysis finds D_t
heavy-tailed (80th percentile about 0.23 on MMSU), larger early in the answer (correlation with
position -0.139), and concentrated on reasoning pivots and option letters. Writes into OUT:

  rollouts.jsonl    one line per rollout: tokens and D_t per token (appended per batch; resumable)
  diagnose.json     distribution (mean, p50/p80/p90/p99, max), Pearson correlation of D_t with
                    relative and absolute position, top-divergence positions and tokens
  diagnose.md       the same as tables
  kl_histogram.png  histogram of D_t with the 80th percentile marked
  heat_strip.png    one rollout, each token coloured by its D_t
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cordlite.eval.io import EvalError, check_run_file, load_eval_model, resolve_model, resolve_prompt
from cordlite.eval.report import divergence_histogram, heat_strip
from cordlite.files import append_jsonl, md_table, read_jsonl, write_text_atomic
from cordlite.lock import writer_lock


@dataclass(frozen=True)
class DiagnoseSettings:
    manifest: str
    out: str
    model: str = ""
    adapter: str | None = None
    quantization: str = "none"
    device: str = "auto"
    instruction: str | None = None  # None: as trained (cordlite.eval.evaluate.resolve_prompt)
    system_prompt: str | None = None
    limit: int | None = 32
    rollouts: int = 1
    temperature: float = 1.0
    max_new_tokens: int | None = None  # None: as trained
    batch_size: int = 4
    seed: int = 0
    chunk_size: int = 64
    top: int = 20
    min_count: int = 2
    strip: str | None = None  # item id drawn as the heat strip; None = the first item
    overwrite: bool = False
    progress: bool = True
    recipe: str | None = None  # a training recipe: its model, instruction, system prompt and max_new_tokens


RESUME_KEYS = ("manifest", "model", "adapter", "quantization", "instruction", "system_prompt", "rollouts",
               "temperature", "max_new_tokens", "batch_size", "seed")


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def analyse(rows: list[dict], top: int = 20, min_count: int = 2) -> dict:
    """Statistics of D_t over all rollout tokens. PURE: rows hold `tokens` and `kl` lists."""
    values, rel, pos = [], [], []
    positions = []  # (D, row index, t)
    for ri, r in enumerate(rows):
        length = len(r["kl"])
        for t, d in enumerate(r["kl"]):
            values.append(d)
            pos.append(t + 1)
            rel.append(t / (length - 1) if length > 1 else 0.0)
            positions.append((d, ri, t))
    if not values:
        raise EvalError("no rollout tokens to analyse; raise --max-new-tokens or --limit")
    v, rel_a, pos_a = np.asarray(values), np.asarray(rel), np.asarray(pos, dtype=float)
    p80 = float(np.percentile(v, 80))
    multi = np.asarray([len(r["kl"]) > 1 for r in rows for _ in r["kl"]])  # relative position needs T > 1
    above = v > p80
    positions.sort(key=lambda x: -x[0])
    top_positions = []
    for d, ri, t in positions[:top]:
        toks = rows[ri]["tokens"]
        top_positions.append({"id": rows[ri]["id"], "rollout": rows[ri]["rollout"], "position": t + 1,
                              "length": len(toks), "token": toks[t], "kl": d,
                              "context": "".join(toks[max(0, t - 4) : t]) + "[" + toks[t] + "]"
                                         + "".join(toks[t + 1 : t + 3])})
    by_token: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for tok, d in zip(r["tokens"], r["kl"]):
            by_token[tok.strip() or repr(tok)].append(d)
    top_tokens = sorted(({"token": k, "count": len(ds), "mean_kl": float(np.mean(ds)), "max_kl": float(np.max(ds))}
                         for k, ds in by_token.items() if len(ds) >= min_count), key=lambda x: -x["mean_kl"])[:top]
    return {
        "n_rollouts": len(rows),
        "n_tokens": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p80": p80,
        "p90": float(np.percentile(v, 90)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "share_of_kl_in_top20pct_tokens": float(v[above].sum() / v.sum()) if v.sum() > 0 else None,
        "pearson_relative_position": _pearson(rel_a[multi], v[multi]),
        "pearson_absolute_position": _pearson(pos_a, v),
        "mean_relative_position_all": float(rel_a[multi].mean()) if multi.any() else None,
        "mean_relative_position_above_p80": float(rel_a[multi & above].mean()) if (multi & above).any() else None,
        "top_positions": top_positions,
        "top_tokens": top_tokens,
    }


def _rollout_rows(net, processor, rt, exs, first_index: int, s: DiagnoseSettings, tokens) -> list[dict]:
    import torch

    from cordlite.data import AudioCache, encode_views
    from cordlite.models.lora import adapters_off
    from cordlite.models.sampling import repeat_rows, sample
    from cordlite.objective.logprobs import completion_hidden, full_logprobs, student_token_terms

    views = encode_views(processor, exs, AudioCache(), s.instruction, s.system_prompt).to(rt.device)
    torch.manual_seed(s.seed * 1_000_003 + first_index)
    teacher = adapters_off(net) if hasattr(net, "disable_adapter") else contextlib.nullcontext()
    with torch.no_grad():
        r = sample(net, views.audio, s.rollouts, temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                   end_ids=tokens[0], pad_id=tokens[1], blocked_ids=tokens[2])
        ids, mask = r.completion_ids, r.completion_mask  # [n, L]
        with teacher:
            hidden = completion_hidden(net, repeat_rows(views.text, r.source), ids, mask)
            teacher_lp = full_logprobs(net, hidden, s.chunk_size)  # [n, L, V]
        hidden = completion_hidden(net, repeat_rows(views.audio, r.source), ids, mask)
        _, kl = student_token_terms(net, hidden, ids, teacher_lp, s.chunk_size)  # [n, L]
    tok = processor.tokenizer
    rows = []
    for i in range(ids.shape[0]):
        length = int(mask[i].sum())
        tid = ids[i, :length].tolist()
        rows.append({"id": exs[int(r.source[i])].id, "rollout": i % s.rollouts, "finished": bool(r.finished[i]),
                     "length": length, "token_ids": tid, "tokens": [tok.decode([t]) for t in tid],
                     "kl": [round(float(x), 6) for x in kl[i, :length].float().cpu()]})
    return rows


def run_diagnose(s: DiagnoseSettings) -> dict:
    with writer_lock(s.out, "cordlite diagnose", fix="pass another --out"):
        from cordlite.data import read_manifest
        from cordlite.models.tokens import audio_special_token_ids, end_token_ids

        s, _ = resolve_prompt(s)
        if min(s.rollouts, s.batch_size, s.max_new_tokens, s.chunk_size, s.top) < 1 or s.temperature <= 0:
            raise EvalError("--rollouts, --batch-size, --max-new-tokens, --chunk-size and --top must be >= 1 and "
                            "--temperature > 0 (D_t is measured along sampled rollouts)")
        examples = read_manifest(s.manifest)
        if s.limit is not None:
            examples = examples[: s.limit]
        if s.strip is not None and s.strip not in {ex.id for ex in examples}:
            raise EvalError(f"--strip {s.strip!r}: no such item id among the {len(examples)} items diagnosed")
        model_path = resolve_model(s.model, s.adapter)
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {**dataclasses.asdict(s), "model": model_path}
        check_run_file(out, settings, RESUME_KEYS, "rollouts.jsonl", s.overwrite)
        path = out / "rollouts.jsonl"
        counts: dict[str, int] = defaultdict(int)
        for row in read_jsonl(path):
            counts[row.get("id")] += 1
        todo = [(i, ex) for i, ex in enumerate(examples) if counts[ex.id] < s.rollouts]
        if todo:
            net, processor, rt = load_eval_model(model_path, s.adapter, s.quantization, s.device)
            end = end_token_ids(net, processor.tokenizer)
            pad = processor.tokenizer.pad_token_id
            tokens = (end, pad if pad is not None else end[-1], audio_special_token_ids(processor.tokenizer))
            bar = None
            if s.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="diagnose", unit="item",
                           file=sys.stderr)
            for start in range(0, len(todo), s.batch_size):
                chunk = todo[start : start + s.batch_size]
                append_jsonl(path, _rollout_rows(net, processor, rt, [ex for _, ex in chunk], chunk[0][0], s, tokens))
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        wanted = {ex.id for ex in examples}
        seen: set[tuple] = set()
        rows = []
        for row in read_jsonl(path):
            key = (row.get("id"), row.get("rollout"))
            if row.get("id") in wanted and key not in seen:
                seen.add(key)
                rows.append(row)
        order = {ex.id: i for i, ex in enumerate(examples)}
        rows.sort(key=lambda r: (order[r["id"]], r["rollout"]))
        stats = analyse(rows, s.top, s.min_count)
        strip_row = next(r for r in rows if r["id"] == (s.strip or rows[0]["id"]))
        report = {"model": model_path, "adapter": s.adapter, "manifest": s.manifest, "n_items": len(examples),
                  "sampling": {"rollouts_per_item": s.rollouts, "temperature": s.temperature,
                               "max_new_tokens": s.max_new_tokens, "seed": s.seed, "quantization": s.quantization},
                  "prompt": {"instruction": s.instruction, "system_prompt": s.system_prompt},
                  "teacher": "base text view (adapters off)" if s.adapter else "text view of the same model",
                  "heat_strip": {"id": strip_row["id"], "rollout": strip_row["rollout"]}, **stats}
        write_text_atomic(out / "diagnose.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(out / "diagnose.md", _markdown(report))
        divergence_histogram([d for r in rows for d in r["kl"]], stats["p80"], out / "kl_histogram.png")
        heat_strip(strip_row["tokens"], strip_row["kl"], out / "heat_strip.png",
                   title=f"D_t along rollout {strip_row['rollout']} of {strip_row['id']}")
        return report


def _markdown(r: dict) -> str:
    def fmt(x):
        return "-" if x is None else f"{x:.4f}"

    lines = [
        "# Per-token divergence along audio rollouts\n",
        f"- model: `{r['model']}`" + (f", adapter: `{r['adapter']}`" if r["adapter"] else ""),
        f"- manifest: `{r['manifest']}`: {r['n_items']} items, {r['n_rollouts']} rollouts, {r['n_tokens']} tokens",
        f"- sampling: temperature {r['sampling']['temperature']}, max_new_tokens {r['sampling']['max_new_tokens']}, "
        f"seed {r['sampling']['seed']}; teacher: {r['teacher']}\n",
        "D_t = KL(audio view || text view) over the full vocabulary, per generated token.\n",
        md_table(["mean", "median", "p80", "p90", "p99", "max"],
                 [[fmt(r["mean"]), fmt(r["median"]), fmt(r["p80"]), fmt(r["p90"]), fmt(r["p99"]), fmt(r["max"])]]),
        f"\n- share of all divergence carried by the tokens above p80: {fmt(r['share_of_kl_in_top20pct_tokens'])}",
        f"- Pearson correlation of D_t with relative position: {fmt(r['pearson_relative_position'])} "
        f"(paper, Qwen2-Audio on MMSU: -0.139); with absolute position: {fmt(r['pearson_absolute_position'])}",
        f"- mean relative position of tokens above p80: {fmt(r['mean_relative_position_above_p80'])} "
        f"(all tokens: {fmt(r['mean_relative_position_all'])})\n",
        "## Highest-divergence positions\n",
        md_table(["D_t", "item", "rollout", "t / T", "token", "context"],
                 [[fmt(p["kl"]), p["id"], p["rollout"], f"{p['position']} / {p['length']}", repr(p["token"]),
                   p["context"]] for p in r["top_positions"]]),
        "\n## Tokens with the highest mean divergence\n",
        md_table(["token", "count", "mean D_t", "max D_t"],
                 [[repr(t["token"]), t["count"], fmt(t["mean_kl"]), fmt(t["max_kl"])] for t in r["top_tokens"]]),
        "\nFigures: `kl_histogram.png` (80th percentile marked), `heat_strip.png` "
        f"(item {r['heat_strip']['id']}, rollout {r['heat_strip']['rollout']}).\n",
    ]
    return "\n".join(lines)
