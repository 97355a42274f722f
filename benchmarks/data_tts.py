"""Throughput of `cordlite data tts` (espeak-ng or flite): N word problems voiced, checked, timed.

    python -m benchmarks.data_tts --n 1000 --workers 2 --engine auto --out /tmp/bench_tts
    python -m benchmarks.data_tts --n 1000 --backend flite --out /tmp/bench_tts_flite

Writes OUT/questions.jsonl (GSM8K-like word problems with money, fractions, LaTeX and some
multiple choice, seeded, 60-260 characters), runs the job into OUT/spoken, then the check.
Prints wall time, rows per second, hours of audio and the check result. The output folder
is deleted first so every run starts cold (no resumed rows).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import time
from pathlib import Path

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonah")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")


def question(rng: random.Random, i: int) -> dict:
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(3, 90), rng.randint(2, 40), rng.randint(2, 9)
    kind = i % 6
    if kind == 0:
        q = (f"{name} has {a} {item}. {other} gives {name} {b} more, and then {name} shares them "
             f"equally among {c} friends. How many {item} does each friend get, ignoring leftovers?")
        ans = str((a + b) // c)
    elif kind == 1:
        price = rng.randint(105, 995) / 100
        q = (f"A notebook costs ${price:.2f} and a pen costs ${b}. {name} buys {c} notebooks and one pen. "
             f"How much does {name} spend in total?")
        ans = f"{price * c + b:.2f}"
    elif kind == 2:
        q = (f"Solve for $x$: ${c}x + {b} = {c * a + b}$. Then compute $x^2 - {b}$.")
        ans = str(a * a - b)
    elif kind == 3:
        q = (f"A tank is $\\frac{{{c - 1}}}{{{c}}}$ full and holds {a * c} liters when full. "
             f"{other} uses {b}% of the water in it. How many liters are left?")
        ans = f"{a * (c - 1) * (100 - b) / 100:g}"
    elif kind == 4:
        q = f"What is the value of $\\sqrt{{{a * a}}} + {b}^2$?"
        ans = str(a + b * b)
    else:
        right = a + b
        options = [str(right), str(right + 1), str(right - 2), str(right + 10)]
        rng.shuffle(options)
        return {"id": f"b{i:05d}", "question": f"{name} walks {a} km on Monday and {b} km on Tuesday. "
                f"How many km in total?", "choices": options, "answer": options.index(str(right))}
    return {"id": f"b{i:05d}", "question": q, "answer": ans}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=0, help="0 = the job's default")
    ap.add_argument("--backend", choices=("espeak", "flite"), default="espeak")
    ap.add_argument("--engine", choices=("auto", "binary", "library"), default="auto", help="espeak only")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_tts"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from data_tools.check import check_manifest
    from data_tools.job.build import build
    from data_tools.job.config import job_from_dict

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    rng = random.Random(args.seed)
    rows = [question(rng, i) for i in range(args.n)]
    src = args.out / "questions.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chars = [len(r["question"]) for r in rows]

    cfg = job_from_dict({"source": {"path": str(src)}, "output": {"dir": str(args.out / "spoken")},
                         "tts": {"backend": args.backend, "espeak_engine": args.engine},
                         "workers": args.workers})
    load = os.getloadavg()[0]

    def cpu() -> float:  # this process and its espeak-ng / flite children: robust to a busy machine
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    result = build(cfg, progress=False)
    seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    t1 = time.perf_counter()
    report = check_manifest(result.manifest)
    check_s = time.perf_counter() - t1
    print(json.dumps({
        "questions": args.n, "mean_chars": round(sum(chars) / len(chars), 1), "max_chars": max(chars),
        "engine": result.summary["backend"], "workers": result.summary["run"]["workers"], "cpus": os.cpu_count(),
        "load_avg_1min_before": round(load, 2), "build_seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2), "cpu_ms_per_row": round(1000 * cpu_seconds / max(1, args.n), 1),
        "rows_per_second": round(result.new_rows / seconds, 1), "rows": result.rows,
        "rejected": result.rejected, "audio_hours": result.summary["audio_hours"],
        "mean_clip_seconds": result.summary["duration_seconds"].get("mean"),
        "check_ok": report["ok"], "check_seconds": round(check_s, 2), "manifest": str(result.manifest),
    }, indent=2))


if __name__ == "__main__":
    main()
