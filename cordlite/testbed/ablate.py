"""The testbed ablation suite: the paper's comparison on the miniature LALM, with seeds and spread.

    cordlite testbed ablate recipes/suites/testbed_ablation.yaml [--jobs 2] [--seeds 0,1,2] [--steps 100]

For every method x seed (recipes/suites/testbed_ablation.yaml lists them): train from the built testbed
checkpoint for the same number of steps with the same number of sequences per step, score the
fixed test split (greedy, text view and audio view) every `eval_every` steps, and write
OUT/<method>/seed_<k>/result.json. Finished runs are skipped on the next call (a changed setting
reruns that method), an interrupted LoRA run resumes from its last checkpoint. Then

  OUT/results.json   every run's curve, the per-method mean and spread, machine and timings
  OUT/table.md       the table (paper Table 1 / Table 3 columns), mean +- sample std over seeds
  OUT/curves.png     audio accuracy and gap over training steps, per method (mean, min-max band)

Gap, as in the paper: gap = Acc_text(base) - Acc_audio(method), gap reduction = 1 - gap / gap_base.
The table also shows each method's own text accuracy and own gap (text - audio of the same
weights), since post-training the shared language model can move the text view too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cordlite.files import write_text_atomic

KINDS = ("lora", "align")


class SuiteError(ValueError):
    """A problem with the suite file, naming the field and the fix."""


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    kind: str = "lora"
    recipe: dict = field(default_factory=dict)  # nested overrides on the base recipe


@dataclass(frozen=True)
class Suite:
    path: str
    testbed: str
    base_recipe: str
    out: str
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    jobs: int
    control_lr: float
    control_warmup_steps: int
    methods: tuple[Method, ...]

    def eval_steps(self) -> list[int]:
        steps = list(range(self.eval_every, self.steps + 1, self.eval_every))
        return steps if steps and steps[-1] == self.steps else steps + [self.steps]


def load_suite(path: str | Path, seeds: tuple[int, ...] | None = None, steps: int | None = None,
               jobs: int | None = None, out: str | None = None) -> Suite:
    """Read and check a suite file; relative paths in it are relative to the working directory."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"{p}: no such suite file (see recipes/suites/testbed_ablation.yaml)")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SuiteError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{p}: expected a mapping at the top level")
    problems: list[str] = []
    known = {"testbed", "base_recipe", "out", "seeds", "steps", "eval_every", "jobs", "control", "methods"}
    problems += [f"{key}: unknown field; allowed: {', '.join(sorted(known))}" for key in raw if key not in known]

    def get(key, typ, default=None):
        value = raw.get(key, default)
        if value is None or (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
            problems.append(f"{key}: {value!r} must be a {typ.__name__ if isinstance(typ, type) else 'number'}")
            return default
        return value

    testbed, base_recipe = get("testbed", str, ""), get("base_recipe", str, "")
    suite_out = out or get("out", str, "")
    n_steps = steps if steps is not None else get("steps", int, 1)
    eval_every = get("eval_every", int, 1)
    n_jobs = jobs if jobs is not None else get("jobs", int, 1)
    raw_seeds = list(seeds) if seeds is not None else raw.get("seeds")
    if not isinstance(raw_seeds, list) or not raw_seeds or not all(isinstance(s, int) for s in raw_seeds):
        problems.append(f"seeds: {raw_seeds!r} must be a non-empty list of integers, e.g. [0, 1, 2]")
        raw_seeds = [0]
    if n_steps < 1 or eval_every < 1 or n_jobs < 1:
        problems.append(f"steps ({n_steps}), eval_every ({eval_every}) and jobs ({n_jobs}) must be >= 1")
    control = raw.get("control") or {}
    if not isinstance(control, dict):
        problems.append("control: must be a mapping with lr and warmup_steps")
        control = {}
    methods: list[Method] = []
    raw_methods = raw.get("methods")
    if not isinstance(raw_methods, list) or not raw_methods:
        problems.append("methods: must be a non-empty list of {name, label, kind, recipe}")
        raw_methods = []
    for i, m in enumerate(raw_methods):
        where = f"methods[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
            problems.append(f"{where}: needs a name (a mapping with name, label, and kind or recipe)")
            continue
        kind = m.get("kind", "lora")
        if kind not in KINDS:
            problems.append(f"{where}.kind: {kind!r}; choose from {', '.join(KINDS)}")
        recipe = m.get("recipe", {}) or {}
        if not isinstance(recipe, dict):
            problems.append(f"{where}.recipe: must be a mapping of recipe sections, e.g. {{loss: {{alpha: 1.0}}}}")
            recipe = {}
        methods.append(Method(m["name"], str(m.get("label", m["name"])), kind, recipe))
    names = [m.name for m in methods]
    problems += [f"methods: name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if base_recipe and not Path(base_recipe).is_file():
        problems.append(f"base_recipe: {base_recipe} does not exist; point it at a recipe such as "
                        "recipes/testbed_cord.yaml")
    if problems:
        raise SuiteError(f"{p}: " + "; ".join(problems))
    return Suite(str(p), testbed, base_recipe, suite_out, tuple(raw_seeds), n_steps, eval_every, n_jobs,
                 float(control.get("lr", 4e-3)), int(control.get("warmup_steps", 10)), tuple(methods))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_raw(suite: Suite) -> dict:
    import yaml

    return yaml.safe_load(Path(suite.base_recipe).read_text(encoding="utf-8")) or {}


def lora_recipe(suite: Suite, method: Method, seed: int, run_dir: Path):
    """The recipe of one LoRA run: base recipe + the method's overrides + the suite's budget."""
    from cordlite.config import recipe_from_dict

    raw = _merge(_base_raw(suite), method.recipe)
    raw = _merge(raw, {"model": {"name_or_path": str(Path(suite.testbed) / "model")},
                       "data": {"train_manifest": str(Path(suite.testbed) / "data" / "cord.jsonl")},
                       "train": {"max_steps": suite.steps, "seed": seed},
                       "output": {"dir": str(run_dir), "save_every": suite.eval_every, "progress": False,
                                  "keep_last": len(suite.eval_steps()) + 1}})
    return recipe_from_dict(raw, source=f"{suite.path} methods[{method.name}]")


def _testbed_fingerprint(testbed: str) -> str:
    from cordlite.testbed.build import MARKER, read_marker

    marker = read_marker(Path(testbed) / "model")
    if marker is None or "fingerprint" not in marker:
        raise SuiteError(f"testbed: {testbed} is not a finished build ({Path(testbed) / 'model' / MARKER} "
                         f"missing); run `cordlite testbed build {testbed}`")
    return marker["fingerprint"]


def run_key(suite: Suite, method: Method, seed: int) -> str:
    """What decides a run's result: a changed key reruns it."""
    return _digest({"method": [method.kind, method.recipe], "seed": seed, "steps": suite.steps,
                    "eval_steps": suite.eval_steps(), "base": _base_raw(suite) if method.kind == "lora" else None,
                    "control": [suite.control_lr, suite.control_warmup_steps] if method.kind == "align" else None,
                    "testbed": _testbed_fingerprint(suite.testbed)})


def _score(model, processor, examples, instruction, responses: Path | None = None) -> dict:
    """Test-split accuracies; with `responses`, also the answers (JSONL) and the kinds of audio and
    text errors (cordlite.testbed.errors)."""
    from cordlite.files import write_jsonl_atomic
    from cordlite.testbed.errors import error_counts
    from cordlite.testbed.evaluate import evaluate_examples

    rows, s = evaluate_examples(model, processor, examples, instruction, batch_size=64, max_new_tokens=64,
                                progress=False)
    point = {k: s[k] for k in ("text_acc", "audio_acc", "gap", "n")}
    if responses is not None:
        responses.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(responses, rows)
        refs = {ex.id: ex.answer for ex in examples}
        point["errors"] = {view: error_counts(rows, refs, view) for view in ("audio", "text")}
    return point


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_lora(suite: Suite, method: Method, seed: int, run_dir: Path, test, instruction: str) -> list[dict]:
    from cordlite.testbed.evaluate import load_for_eval
    from cordlite.trainer import train

    recipe = lora_recipe(suite, method, seed, run_dir / "train")
    done = run_dir / "train" / "adapter" / "adapter_config.json"
    if not done.is_file():
        train(recipe, resume=(run_dir / "train" / "checkpoints").is_dir())
    curve = []
    for step in suite.eval_steps():
        cached = run_dir / "eval" / f"step_{step:06d}.json"
        if cached.is_file():
            curve.append(json.loads(cached.read_text(encoding="utf-8")))
            continue
        adapter = run_dir / "train" / "checkpoints" / f"step_{step:06d}" / "adapter"
        if step == suite.steps:
            adapter = run_dir / "train" / "adapter"
        model, processor = load_for_eval(Path(suite.testbed) / "model", adapter)
        final = run_dir / "eval" / "responses.jsonl" if step == suite.steps else None
        point = {"step": step, **_score(model, processor, test, instruction, final)}
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cached, json.dumps(point) + "\n")
        curve.append(point)
        _log(f"  [{method.name} seed {seed}] step {step}: audio {point['audio_acc']:.1f}%  "
             f"text {point['text_acc']:.1f}%")
    return curve


def _run_align(suite: Suite, method: Method, seed: int, run_dir: Path, test, instruction: str) -> list[dict]:
    from cordlite.data import read_manifest
    from cordlite.testbed.fit import FitConfig
    from cordlite.testbed.stages import align_audio, load_checkpoint

    base = _base_raw(suite)
    per_step = int(base.get("train", {}).get("batch_size", 4)) * (int(base.get("rollout", {}).get("group_size", 4)) + 1)
    model, processor = load_checkpoint(Path(suite.testbed) / "model")
    train_rows = read_manifest(Path(suite.testbed) / "data" / "train.jsonl")
    targets = suite.eval_steps()
    curve: list[dict] = []
    calls = [0]

    def evaluate() -> float:
        calls[0] += 1
        if calls[0] == 1:  # step 0: the base, scored by the build
            return 0.0
        step = targets[len(curve)]
        final = run_dir / "eval" / "responses.jsonl" if step == suite.steps else None
        point = {"step": step, **_score(model, processor, test, instruction, final)}
        curve.append(point)
        _log(f"  [{method.name} seed {seed}] step {point['step']}: audio {point['audio_acc']:.1f}%  "
             f"text {point['text_acc']:.1f}%")
        return 0.0

    cfg = FitConfig(lr=suite.control_lr, batch_size=per_step, max_steps=suite.steps,
                    warmup_steps=suite.control_warmup_steps, eval_every=suite.eval_every, target=2.0, seed=seed)
    align_audio(model, processor, train_rows, [], instruction, cfg, progress=False, evaluate=evaluate)
    return curve


def run_one(suite: Suite, method: Method, seed: int, threads: int = 1) -> dict:
    """Train and score one method x seed (or return its finished result)."""
    import torch

    from cordlite.data import read_manifest

    run_dir = Path(suite.out) / method.name / f"seed_{seed}"
    result_path = run_dir / "result.json"
    key = run_key(suite, method, seed)
    if result_path.is_file():
        old = json.loads(result_path.read_text(encoding="utf-8"))
        if old.get("key") == key:
            return old
    spec_path = run_dir / "key.txt"
    if run_dir.exists() and (not spec_path.is_file() or spec_path.read_text().strip() != key):
        import shutil

        shutil.rmtree(run_dir)  # made with other settings: its checkpoints would mix two budgets
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec_path, key + "\n")
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # two runs at a time: their weight-loading bars would interleave
    t0 = time.perf_counter()
    from cordlite.testbed.evaluate import testbed_instruction

    instruction = testbed_instruction(suite.testbed)
    test = read_manifest(Path(suite.testbed) / "data" / "test.jsonl")
    _log(f"  [{method.name} seed {seed}] started")
    if method.kind == "align":
        curve = _run_align(suite, method, seed, run_dir, test, instruction)
    else:
        curve = _run_lora(suite, method, seed, run_dir, test, instruction)
    result = {"key": key, "method": method.name, "label": method.label, "seed": seed, "steps": suite.steps,
              "curve": curve, "final": curve[-1], "seconds": round(time.perf_counter() - t0, 1),
              "torch_threads": threads}
    write_text_atomic(result_path, json.dumps(result, indent=2) + "\n")
    return result


def _worker(args: tuple) -> dict:
    suite, method, seed, threads = args
    try:
        return run_one(suite, method, seed, threads)
    except Exception as e:  # noqa: BLE001 - re-raised as a plain, picklable error naming the run
        raise SuiteError(f"{method.name} seed {seed}: {type(e).__name__}: {e}") from None


def check_methods(suite: Suite) -> None:
    """Every LoRA method's recipe builds (all problems at once, before any run starts)."""
    from cordlite.config import ConfigError

    problems = []
    for m in suite.methods:
        if m.kind == "lora":
            try:
                lora_recipe(suite, m, suite.seeds[0], Path(suite.out) / m.name)
            except ConfigError as e:
                problems.append(f"methods[{m.name}]: {e}")
    if problems:
        raise SuiteError("\n".join(problems))


def run_suite(suite: Suite) -> dict:
    """Every method x seed (suite.jobs at a time), then results.json, table.md and curves.png."""
    import concurrent.futures as cf
    import multiprocessing as mp

    base = base_scores(suite.testbed)
    check_methods(suite)
    tasks = [(suite, m, s) for s in suite.seeds for m in suite.methods]
    threads = max(1, (os.cpu_count() or 1) // suite.jobs)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results: list[dict] = []
    _log(f"[ablate] {len(tasks)} runs ({len(suite.methods)} methods x {len(suite.seeds)} seeds, {suite.steps} steps "
         f"each), {suite.jobs} at a time with {threads} thread(s) each -> {suite.out}")
    if suite.jobs == 1:
        for i, (s, m, seed) in enumerate(tasks, 1):
            results.append(run_one(s, m, seed, threads))
            _done(i, len(tasks), results[-1], t0)
    else:
        with cf.ProcessPoolExecutor(suite.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, (s, m, seed, threads)) for s, m, seed in tasks]
            for i, fut in enumerate(cf.as_completed(futures), 1):
                results.append(fut.result())
                _done(i, len(tasks), results[-1], t0)
    summary = summarize(suite, base, results)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["machine"] = {"cpu_count": os.cpu_count(), "jobs": suite.jobs, "torch_threads_per_job": threads,
                          "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "load_average_start": load0,
                          "load_average_end": os.getloadavg()[0] if load0 is not None else None}
    write_outputs(suite, summary)
    return summary


def _done(i: int, n: int, r: dict, t0: float) -> None:
    f = r["final"]
    _log(f"[ablate] {i}/{n} {r['method']} seed {r['seed']}: audio {f['audio_acc']:.1f}%  text {f['text_acc']:.1f}%  "
         f"({r['seconds']:.0f} s; {time.perf_counter() - t0:.0f} s elapsed)")


def base_scores(testbed: str) -> dict:
    path = Path(testbed) / "eval" / "base_test.json"
    if not path.is_file():
        raise SuiteError(f"testbed: {path} missing; finish the build with `cordlite testbed build {testbed}`")
    s = json.loads(path.read_text(encoding="utf-8"))
    out = {"step": 0, "text_acc": s["text_acc"], "audio_acc": s["audio_acc"], "gap": s["gap"], "n": s["n"]}
    responses = path.with_name("base_test_responses.jsonl")
    if responses.is_file():
        from cordlite.data import read_manifest
        from cordlite.testbed.errors import error_counts

        rows = [json.loads(line) for line in responses.read_text(encoding="utf-8").splitlines() if line.strip()]
        refs = {ex.id: ex.answer for ex in read_manifest(Path(testbed) / "data" / "test.jsonl")}
        out["errors"] = {view: error_counts(rows, refs, view) for view in ("audio", "text")}
    return out


def _stats(values: list[float | None]) -> dict | None:
    if not values or any(v is None for v in values):
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def summarize(suite: Suite, base: dict, results: list[dict]) -> dict:
    """Per method: mean and spread over seeds of audio, text, own gap, paper gap and gap reduction,
    at the final step and along the curve. PURE."""
    text_base, gap_base = base["text_acc"], base["gap"]
    methods = []
    for m in suite.methods:
        runs = sorted((r for r in results if r["method"] == m.name), key=lambda r: r["seed"])
        if not runs:
            continue
        finals = [r["final"] for r in runs]
        paper_gap = [text_base - f["audio_acc"] for f in finals]
        row = {"name": m.name, "label": m.label, "seeds": [r["seed"] for r in runs],
               "audio_acc": _stats([f["audio_acc"] for f in finals]),
               "text_acc": _stats([f["text_acc"] for f in finals]),
               "own_gap": _stats([f["text_acc"] - f["audio_acc"] for f in finals]),
               "gap": _stats(paper_gap),
               "gap_reduction": _stats([100.0 * (1 - g / gap_base) if gap_base > 0 else None for g in paper_gap]),
               "text_change": _stats([f["text_acc"] - text_base for f in finals]),
               "seconds_per_run": statistics.fmean(r["seconds"] for r in runs)}
        with_errors = [f["errors"] for f in finals if "errors" in f]
        if len(with_errors) == len(finals):
            row["errors"] = {view: {k: _stats([e[view][k] for e in with_errors]) for k in with_errors[0][view]}
                             for view in with_errors[0]}
        curve = []
        for i, step in enumerate(suite.eval_steps()):
            points = [r["curve"][i] for r in runs if i < len(r["curve"])]
            curve.append({"step": step, "audio_acc": _stats([p["audio_acc"] for p in points]),
                          "gap": _stats([text_base - p["audio_acc"] for p in points]),
                          "text_acc": _stats([p["text_acc"] for p in points])})
        row["curve"] = curve
        methods.append(row)
    return {"suite": suite.path, "testbed": suite.testbed, "steps": suite.steps, "seeds": list(suite.seeds),
            "test_clips": base["n"], "base": base, "methods": methods, "runs": results}


def _pm(s: dict | None, digits: int = 1, sign: bool = False, unit: str = "") -> str:
    if s is None:
        return "n/a"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{fmt.format(s['mean'])}{unit} ± {s['std']:.{digits}f}{unit}"


def table_markdown(summary: dict) -> str:
    b = summary["base"]
    lines = [f"Test split: {summary['test_clips']} held-out questions in held-out voices; "
             f"{summary['steps']} steps per method; mean ± sample std over seeds {summary['seeds']}.",
             "Gap = text accuracy of the base - audio accuracy of the method (the paper's Delta); "
             "own gap = text - audio of the same weights.", "",
             "| method | audio acc. | text acc. | gap | gap reduction | own gap | text change |",
             "|---|---|---|---|---|---|---|",
             f"| Base (testbed checkpoint) | {b['audio_acc']:.1f} | {b['text_acc']:.1f} | {b['gap']:.1f} | - | "
             f"{b['gap']:.1f} | - |"]
    for m in summary["methods"]:
        lines.append(f"| {m['label']} | {_pm(m['audio_acc'])} | {_pm(m['text_acc'])} | {_pm(m['gap'])} | "
                     f"{_pm(m['gap_reduction'], unit='%')} | {_pm(m['own_gap'])} | {_pm(m['text_change'], sign=True)} |")
    rows = [("Base", {v: {k: {"mean": n, "std": 0.0} for k, n in c.items()} for v, c in b["errors"].items()})] \
        if "errors" in b else []
    rows += [(m["label"], m["errors"]) for m in summary["methods"] if "errors" in m]
    if rows:
        lines += ["", "Wrong answers by kind at the last step (cordlite/testbed/errors.py), count of "
                  f"{summary['test_clips']}, mean ± std over seeds: operands = the question was misread "
                  "(wrong numbers or operations), steps = right operands but a wrong result along the chain.", "",
                  "| method | audio: operands | audio: steps | audio: no chain | text: operands | text: steps |",
                  "|---|---|---|---|---|---|"]
        for label, e in rows:
            a, t = e["audio"], e["text"]
            lines.append(f"| {label} | {_pm(a['operands'])} | {_pm(a['steps'])} | {_pm(a['format'])} | "
                         f"{_pm(t['operands'])} | {_pm(t['steps'])} |")
    return "\n".join(lines) + "\n"


def plot_curves(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = summary["base"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in summary["methods"]:
        steps = [0] + [p["step"] for p in m["curve"]]
        for ax, key, start in ((axes[0], "audio_acc", base["audio_acc"]), (axes[1], "gap", base["gap"])):
            mean = [start] + [p[key]["mean"] for p in m["curve"]]
            lo = [start] + [p[key]["min"] for p in m["curve"]]
            hi = [start] + [p[key]["max"] for p in m["curve"]]
            (line,) = ax.plot(steps, mean, marker="o", ms=3, label=m["label"])
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
    axes[0].axhline(base["text_acc"], color="k", ls="--", lw=1, label="base text view")
    axes[0].set(title="Audio-view accuracy on the test split", xlabel="training step", ylabel="accuracy (%)")
    axes[1].set(title="Gap (base text acc. - audio acc.)", xlabel="training step", ylabel="points")
    axes[0].legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Testbed ablation: mean over seeds {summary['seeds']}, band = min to max", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(suite: Suite, summary: dict) -> None:
    out = Path(suite.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "table.md", table_markdown(summary))
    plot_curves(summary, out / "curves.png")
