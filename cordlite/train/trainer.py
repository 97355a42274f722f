"""The CORD training loop: read top to bottom.

    cordlite train recipes/tiny_cpu.yaml [--set train.max_steps=10] [--resume]
    accelerate launch --multi_gpu --num_processes 4 -m cordlite train RECIPE   (data parallel)

setup (runtime, data, model + LoRA, optimizer, schedule, resume) -> for each step: take the
step's global batch and this rank's shard of it, collect its rollouts, rewards and advantages
together (no grad: every prompt's rows in one decode loop where rollout.kv_budget_gb allows), then
per micro-batch the teacher's log-probs + loss + backward, sum gradients over ranks, clip,
optimizer step, log one metrics.jsonl line, checkpoint every k steps -> final adapter in RUN/adapter.

Prompts and sampling keys are pure functions of (seed, step, the prompt's place in the global
batch), never of the rank layout, the micro-batch size or how generate calls are split: 2 ranks x b
prompts make the same update as 1 rank x 2b prompts with micro-batches of b, and a run resumes on
any number of ranks. SIGINT/SIGTERM save a checkpoint of the last completed
step and exit; `--resume` continues at the next step with the same prompts and seeds.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

from cordlite.config import TINY_MANIFEST, TINY_MODEL_DIR, Recipe, is_tiny_path
from cordlite.data import (AudioCache, Example, ManifestError, batch_indices, check_clips, clip_problems_message,
                           encode_views, has_text_view, prompt_length_problems, read_manifest, text_views)
from cordlite.files import sha256_file, write_text_atomic
from cordlite.judge.rewards import judge_for_recipe
from cordlite.models.adapter import save_adapter
from cordlite.models.audio_view import FrameCache, FrameStoreError, encoder_digest, encoder_is_frozen
from cordlite.models.load import load_base
from cordlite.models.lora import attach_lora, trainable_parameters
from cordlite.models.runtime import resolve_runtime
from cordlite.objective.references import ReferenceStore, Tokens, step_keys
from cordlite.objective.step import batch_examples, collect, compute_loss, generate_references, score_teacher
from cordlite.recipe import dump_recipe, recipe_to_dict
from cordlite.train.checkpoint import (CheckpointError, clean_checkpoints, latest_checkpoint, load_checkpoint,
                                      save_checkpoint)
from cordlite.train.distributed import Dist, init_distributed
from cordlite.train.meter import linear_sizes, peak_flops, peak_memory_gb, reset_peak_memory, step_flops

METRIC_KEYS = ("step", "loss", "tok_loss", "seq_loss", "kl_mean", "kl_p80", "reward_mean", "weight_mean",
               "weight_max", "tokens_generated", "step_seconds")
_SUMMED = {"tokens_generated", "reference_tokens", "rollout_s", "teacher_s", "judge_s", "forward_s",
           "judge_by_rules", "judge_by_llm", "judge_cache_hits", "judge_unparseable", "generate_calls",
           "prefill_positions", "decode_positions", "teacher_positions", "teacher_head_positions", "grad_positions",
           "grad_head_positions", "reference_calls", "reference_positions", "reference_decode_positions"}
_MAXED = {"kl_max", "weight_max", "kv_cache_gb", "reference_kv_cache_gb"}


class TrainError(RuntimeError):
    """A problem with the run directory or state, with what to do about it."""


class StopRequested(Exception):
    def __init__(self, signum: int):
        self.signum = signum


class StopNow(BaseException):
    """A second SIGINT/SIGTERM: stop at once, without saving (BaseException: nothing may catch it
    on the way out, as with KeyboardInterrupt)."""

    def __init__(self, signum: int):
        self.signum = signum


class _Signals:
    """First SIGINT/SIGTERM asks the loop to stop at a safe point; a second one stops at once.
    Under data parallelism all ranks agree on the stop at the same point."""

    def __init__(self, dist: Dist):
        self.dist = dist
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum

    def check(self) -> None:
        if self.dist.any(self.signum is not None):
            raise StopRequested(self.signum or signal.SIGTERM)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def step_seed(seed: int, step: int, micro: int = 0) -> int:
    """Sampling seed of one micro-batch of one step (micro counts over the global batch)."""
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729) % (2**31)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at 0-based `step`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _trim_metrics(path: Path, done: int) -> None:
    """Drop metric lines of steps past the checkpoint (an interrupted run may have logged them)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= done:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(l + "\n" for l in keep))


def merge_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """One step's stats from its micro-batches: means, except counts/times (summed) and maxima."""
    out = {}
    for k in {k for p in parts for k in p}:
        vals = [p[k] for p in parts if k in p]
        out[k] = sum(vals) if k in _SUMMED else max(vals) if k in _MAXED else sum(vals) / len(vals)
    return out


def prepare_data(recipe: Recipe, dist: Dist) -> tuple[list[Example], int | None]:
    """The manifest's examples, checked (rows, then every clip's header) before any work, and how
    many bad rows data.skip_bad_rows left out (None when it is off: a bad row stops the run)."""
    manifest = Path(recipe.data.train_manifest)
    if (recipe.data.create_tiny_if_missing and is_tiny_path(str(manifest), TINY_MANIFEST) and not manifest.exists()
            and dist.main):
        from data_tools.tiny_spoken import make_tiny_spoken_set

        made = make_tiny_spoken_set(manifest.parent, n_questions=recipe.data.tiny_questions, seed=recipe.train.seed)
        if made != manifest:
            raise TrainError(f"data.train_manifest: the tiny set is written as {made}; set train_manifest to that path")
    dist.barrier()
    skipped: list[str] | None = [] if recipe.data.skip_bad_rows else None
    examples = read_manifest(manifest, skipped=skipped)
    audio_only = [ex.id for ex in examples if not has_text_view(ex)]
    if audio_only:
        raise TrainError(f"{manifest}: {len(audio_only)} row(s) have text_view: false (e.g. {audio_only[0]!r}); "
                         "CORD's teacher is the text view, so train on rows that have one and keep audio-only "
                         "items (such as MMAU) for cordlite eval")
    clips = check_clips(examples, recipe.data.max_audio_seconds)  # headers only: every bad clip before step 1
    if clips.problems and skipped is not None:
        bad = set(clips.bad_ids)
        examples = [ex for ex in examples if ex.id not in bad]
        skipped.extend(clips.problems)
        if not examples:
            raise ManifestError(clip_problems_message(manifest, clips.problems))
    elif clips.problems:
        raise ManifestError(clip_problems_message(manifest, clips.problems))
    if skipped is not None and dist.main:  # written every time, so a fixed manifest leaves no stale list
        out = Path(recipe.output.dir) / "skipped_rows.jsonl"
        write_text_atomic(out, "".join(json.dumps({"reason": r}) + "\n" for r in skipped))
    if skipped and dist.main:
        print(f"note: {manifest}: skipped {len(skipped)} bad row(s) (data.skip_bad_rows), listed in {out}; "
              f"training on the other {len(examples)}", file=sys.stderr)
    if dist.main:
        for note in clips.notes():
            print(f"note: {manifest}: {note}", file=sys.stderr)
    return examples, None if skipped is None else len(skipped)


def _check_batch(recipe: Recipe, dist: Dist) -> int:
    """Prompts per rank; the global batch must split evenly into ranks x micro-batches."""
    t = recipe.train
    if t.batch_size % (dist.world * t.micro_batch_size):
        raise TrainError(f"train.batch_size {t.batch_size} does not split over {dist.world} processes x "
                         f"train.micro_batch_size {t.micro_batch_size}; make batch_size a multiple of "
                         f"{dist.world * t.micro_batch_size}")
    return t.batch_size // dist.world


def _frame_store(recipe: Recipe, model) -> FrameCache | None:
    """data.frames, checked against this model's encoder and the train manifest (None when unset)."""
    if recipe.data.frames is None:
        return None
    if not encoder_is_frozen(model):
        raise TrainError(f"data.frames: {recipe.data.frames} holds a frozen encoder's frames, but this run trains "
                         "the audio encoder; remove data.frames")
    try:
        return FrameCache.load(recipe.data.frames, encoder_digest(model), sha256_file(recipe.data.train_manifest))
    except FrameStoreError as e:
        raise TrainError(f"data.frames: {e}") from None


REFERENCE_BATCH = 64  # text-view references generated together, for the coming steps' prompts


def _prefetch_references(model, processor, examples: list[Example], recipe: Recipe, rt, tokens: Tokens,
                         store: ReferenceStore, step: int, per_rank: int, rank: int) -> dict[str, float]:
    """When a prompt of this step has no text-view reference yet, generate those of every prompt of
    its block of steps (blocks of REFERENCE_BATCH // per_rank steps from step 0: the data order is
    known in advance, and fixed blocks make a resumed run generate what an unbroken one did), in as
    few generate calls as rollout.kv_budget_gb allows. Only for the frozen-base teacher, whose
    references never change. Its seconds and the positions it ran (for the step's FLOPs)."""
    t = recipe.train
    if recipe.loss.lambda_seq <= 0 or recipe.loss.teacher != "base":
        return {}

    def mine(s: int) -> list[Example]:
        idx = batch_indices(len(examples), t.batch_size, s, t.seed, recipe.data.shuffle)
        return [examples[i] for i in idx[rank * per_rank : (rank + 1) * per_rank]]

    if not store.missing(mine(step)):
        return {}
    t0 = time.perf_counter()
    block = max(1, REFERENCE_BATCH // per_rank)
    first = step // block * block
    # The whole block, past max_steps too: a resumed run with another max_steps generates the same.
    ahead = store.missing([ex for s in range(first, first + block) for ex in mine(s)])
    text = {k: v.to(rt.device) for k, v in text_views(processor, ahead, recipe.data.instruction,
                                                      recipe.data.system_prompt).items()}
    calls: list[dict] = []
    generate_references(model, processor.tokenizer, text, ahead, recipe, rt, tokens, store, calls=calls)
    return {"references_s": time.perf_counter() - t0, "reference_calls": float(len(calls)),
            "reference_kv_cache_gb": max(c["kv_bytes"] for c in calls) / 1e9,
            "reference_positions": float(sum(c["prompts"] * c["prompt_len"] + c["rows"] * c["steps"] for c in calls)),
            "reference_decode_positions": float(sum(c["rows"] * c["steps"] for c in calls))}


def train(recipe: Recipe, resume: bool = False) -> Path:
    """Run CORD as the recipe says; returns the run directory."""
    dist = init_distributed(cuda=recipe.model.device != "cpu" and torch.cuda.is_available())
    run_dir = Path(recipe.output.dir)
    ckpt_root = run_dir / "checkpoints"
    if dist.main:
        for left in clean_checkpoints(ckpt_root):
            print(f"removed {left}, left by a run that was killed", file=sys.stderr)
    existing = latest_checkpoint(ckpt_root)
    if existing is not None and not resume:
        raise TrainError(f"{run_dir} already holds checkpoints (latest {existing.name}); pass --resume to "
                         "continue that run, or set output.dir to a new directory")
    per_rank = _check_batch(recipe, dist)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train, dist.local_rank)
    torch.manual_seed(recipe.train.seed)

    examples, rows_skipped = prepare_data(recipe, dist)
    if recipe.model.create_tiny_if_missing and is_tiny_path(recipe.model.name_or_path, TINY_MODEL_DIR) and dist.main:
        from cordlite.models.tiny_checkpoint import ensure_tiny_qwen2audio

        ensure_tiny_qwen2audio(recipe.model.name_or_path)
    dist.barrier()
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt, seed=recipe.train.seed)
    tokenizer = processor.tokenizer
    tokens = Tokens.of(model, tokenizer)
    config = getattr(model.config, "text_config", None) or model.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit:  # every prompt that cannot fit, before the first step
        too_long = prompt_length_problems(processor, examples, recipe.data.instruction, recipe.data.system_prompt,
                                          recipe.rollout.max_new_tokens, int(limit))
        if too_long:
            raise ManifestError(clip_problems_message(Path(recipe.data.train_manifest), too_long, what="row(s)"))
    if dist.main:
        write_text_atomic(run_dir / "config.yaml", dump_recipe(recipe))
        write_text_atomic(run_dir / "runtime.json", json.dumps({**rt.describe(), "world_size": dist.world,
                                                                 "versions": _versions()}, indent=2) + "\n")
        if rt.loss_scaling and recipe.train.mixed_precision == "auto":
            print(f"note: {rt.describe()['device_name']} has no native bf16: training in fp16 with loss scaling "
                  "(RUN/runtime.json)", file=sys.stderr)

    params = [p for _, p in trainable_parameters(model)]
    o, t = recipe.optim, recipe.train
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, o.warmup_steps, t.max_steps, o.schedule))
    # fp16 autocast (GPUs without bf16): the loss is scaled before backward so small gradients do not
    # flush to zero, and unscaled before clipping; a step whose gradients overflowed is skipped.
    scaler = torch.amp.GradScaler(rt.device.type) if rt.loss_scaling else None
    done = 0
    if resume and existing is not None:
        try:
            done = load_checkpoint(existing, model, optimizer, scheduler, scaler)
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        if dist.main:
            print(f"resuming from {existing} ({done} steps done)", file=sys.stderr)
    metrics_path = run_dir / "metrics.jsonl"
    if dist.main:
        _trim_metrics(metrics_path, done)
    dist.barrier()

    meta = {"base_model": recipe.model.name_or_path, "recipe": recipe_to_dict(recipe)}
    store = ReferenceStore(run_dir / "reference_answers.jsonl" if recipe.loss.teacher == "base" else None,
                           write=dist.main)
    judge = judge_for_recipe(recipe, model, tokenizer, rt, run_dir, write_cache=dist.main)  # self: no second load
    audio_cache = AudioCache(recipe.data.max_audio_seconds, recipe.data.audio_cache_mb)
    sizes, peak = linear_sizes(model), peak_flops(rt.device)
    frames = _frame_store(recipe, model)
    counts = frames.counts() if frames is not None else None  # stored clips need no audio read
    progress = None
    if recipe.output.progress and dist.main:
        from tqdm.auto import tqdm

        progress = tqdm(total=t.max_steps, initial=done, desc="cord", unit="step", dynamic_ncols=True)

    def checkpoint(step: int) -> None:
        if dist.main:
            save_checkpoint(ckpt_root, step, model, optimizer, scheduler, meta, recipe.output.keep_last, scaler)
        dist.barrier()

    metrics = metrics_path.open("a", encoding="utf-8") if dist.main else None
    with _Signals(dist) as signals:
        try:
            for step in range(done, t.max_steps):
                t0 = time.perf_counter()
                reset_peak_memory(rt.device)
                indices = batch_indices(len(examples), t.batch_size, step, t.seed, recipe.data.shuffle)
                first = dist.rank * per_rank
                mine = indices[first : first + per_rank]
                optimizer.zero_grad(set_to_none=True)
                prefetch = _prefetch_references(model, processor, examples, recipe, rt, tokens, store, step, per_rank,
                                                dist.rank)
                signals.check()
                views = encode_views(processor, batch_examples(examples, mine), audio_cache, recipe.data.instruction,
                                     recipe.data.system_prompt, counts).to(rt.device)
                keys = step_keys(t.seed, step, list(range(first, first + per_rank)), rt.device)
                # Every prompt of this rank's share of the step at once: rollouts, rewards, advantages.
                collected = collect(model, tokenizer, views, recipe, rt, tokens, store, judge, frames, keys=keys,
                                    score=False)
                parts = [collected.stats]
                for start in range(0, per_rank, t.micro_batch_size):
                    signals.check()
                    # LoRA dropout (the off-policy baselines only) draws from torch's generator.
                    torch.manual_seed(step_seed(t.seed, step, (first + start) // t.micro_batch_size))
                    part = score_teacher(model, collected.prompts(start, start + t.micro_batch_size), recipe, rt)
                    loss, stats = compute_loss(model, part, recipe, rt)
                    share = loss * (len(part.views.examples) / t.batch_size)  # each rank's share of the mean
                    (scaler.scale(share) if scaler is not None else share).backward()
                    parts.append({**part.stats, **stats})
                    del part, loss
                del collected, views
                signals.check()  # parameters are still those of the last completed step
                t1 = time.perf_counter()
                dist.sum_gradients(params)
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients
                max_norm = o.max_grad_norm if o.max_grad_norm > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
                lr = scheduler.get_last_lr()[0]
                if scaler is not None:
                    parts.append({"loss_scale": scaler.get_scale()})
                    scaler.step(optimizer)  # skipped when the gradients overflowed; every rank agrees (same sums)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                parts.append(prefetch)
                row = merge_stats([p for rank_parts in dist.gather(parts) for p in rank_parts])
                row.setdefault("references_s", 0.0)
                done = step + 1
                if dist.main:
                    seconds = time.perf_counter() - t0
                    flops = step_flops(*sizes, row)  # the row sums every rank's positions
                    row.update(step=done, lr=lr, grad_norm=grad_norm, optimizer_s=time.perf_counter() - t1,
                               step_seconds=seconds, world_size=dist.world, global_batch=len(indices),
                               prompt_ids=[examples[i].id for i in indices],
                               peak_memory_gb=peak_memory_gb(rt.device),
                               tokens_per_s=row["tokens_generated"] / max(row["rollout_s"], 1e-9),
                               tflops=flops / 1e12, mfu=flops / seconds / (peak * dist.world) if peak else None)
                    if rows_skipped is not None:
                        row["rows_skipped"] = rows_skipped
                    _log(metrics, row, progress)
                if done % recipe.output.save_every == 0 or done == t.max_steps:
                    checkpoint(done)
        except StopRequested as stop:
            last = latest_checkpoint(ckpt_root)
            saved = last is not None and int(last.name.split("_")[1]) == done
            if done > 0 and not saved:
                try:
                    checkpoint(done)
                except StopNow as again:  # a second signal while saving: the save is dropped whole
                    _stopped_at_once(again.signum, ckpt_root, progress, dist)
            if progress is not None:
                progress.close()
            if dist.main:
                name = signal.Signals(stop.signum).name
                if done == 0:
                    what = "stopped before the first step finished; nothing to save: run the same command again"
                elif saved:
                    what = (f"stopped; the checkpoint of step {done} in {ckpt_root} already holds every finished "
                            "step; continue with --resume")
                else:
                    what = f"saved a checkpoint after step {done} in {ckpt_root}; continue with --resume"
                print(f"\n{name}: {what}", file=sys.stderr)
            raise SystemExit(128 + stop.signum) from None
        except StopNow as stop:
            _stopped_at_once(stop.signum, ckpt_root, progress, dist)
        finally:
            if metrics is not None:
                metrics.close()
    if progress is not None:
        progress.close()
    if dist.main:
        save_adapter(model, run_dir / "adapter", {**meta, "steps": done})
    dist.barrier()
    return run_dir


def _stopped_at_once(signum: int, ckpt_root: Path, progress, dist: Dist) -> None:
    """A second SIGINT/SIGTERM: say what is kept and exit 128 + signum."""
    if progress is not None:
        progress.close()
    if dist.main:
        last = latest_checkpoint(ckpt_root)
        where = (f"the last checkpoint is {last} (steps after it are lost); continue with --resume"
                 if last is not None else "no checkpoint was written: run the same command again")
        print(f"\nsecond {signal.Signals(signum).name}: stopped at once without saving; {where}", file=sys.stderr)
    raise SystemExit(128 + signum) from None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _log(metrics, row: dict, progress) -> None:
    for k in METRIC_KEYS:
        row.setdefault(k, 0.0)
    ordered = {k: row[k] for k in METRIC_KEYS} | {k: row[k] for k in sorted(row) if k not in METRIC_KEYS}
    metrics.write(json.dumps(ordered) + "\n")
    metrics.flush()
    if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.3f}", reward=f"{row.get('reward_mean', 0):.2f}",
                             kl=f"{row['kl_mean']:.3f}", s_step=f"{row['step_seconds']:.2f}",
                             tok_s=f"{row['tokens_per_s']:.0f}")
