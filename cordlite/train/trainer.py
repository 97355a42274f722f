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
from pathlib import Path

import torch

from cordlite.config import TINY_MANIFEST, TINY_MODEL_DIR, Recipe, is_tiny_path
from cordlite.data import (AudioCache, Example, ManifestError, check_clips, clip_problems_message, encode_views,
                           has_text_view, prompt_length_problems, read_manifest, text_views)
from cordlite.files import sha256_file, write_text_atomic
from cordlite.judge.rewards import judge_for_recipe
from cordlite.models.adapter import save_adapter
from cordlite.models.audio_view import FrameCache, FrameStoreError, encoder_digest, encoder_is_frozen
from cordlite.models.load import load_base
from cordlite.models.lora import attach_lora, trainable_parameters
from cordlite.models.runtime import resolve_runtime
from cordlite.objective.references import ReferenceStore, Tokens
from cordlite.recipe import dump_recipe, recipe_to_dict
from cordlite.tracking import Trackers
from cordlite.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from cordlite.train.distributed import Dist, init_distributed
from cordlite.train.identity import base_digest, run_identity
from cordlite.train.meter import linear_sizes, peak_flops
from cordlite.train.optimizer_step import StepParts, run_step
from cordlite.train.run_folder import TrainError, check_output_dir, check_same_run, note, run_lock, start

METRIC_KEYS = ("step", "loss", "tok_loss", "seq_loss", "kl_mean", "kl_p80", "reward_mean", "weight_mean",
               "weight_max", "tokens_generated", "step_seconds")


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


def prepare_data(recipe: Recipe, dist: Dist) -> tuple[list[Example], int | None, str | None]:
    """The manifest's examples, checked (rows, then every clip's header) before any work, how many bad
    rows data.skip_bad_rows left out (None when it is off: a bad row stops the run), and the id of
    the longest clip."""
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
        for line in clips.notes():
            print(f"note: {manifest}: {line}", file=sys.stderr)
    return examples, None if skipped is None else len(skipped), clips.longest


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


def reference_context(recipe: Recipe, base: str | None) -> str:
    """What a text-view reference depends on besides its question: the base's weights, the prompt around
    the question and the reference decoding (the seed too when references are sampled)."""
    ro, d = recipe.rollout, recipe.data
    parts = [base or recipe.model.name_or_path, d.instruction, d.system_prompt, ro.reference_decoding,
             ro.max_new_tokens, recipe.train.seed if ro.reference_decoding == "sample" else None,
             ro.top_p if ro.reference_decoding == "sample" else None]
    return json.dumps(parts)


def setup(recipe: Recipe, dist: Dist, run_dir: Path | None = None,
          identity: dict | None = None) -> tuple[StepParts, int | None]:
    """Everything the steps share, checked before any work: runtime, data, the model with its LoRA,
    the optimizer, schedule and (fp16) loss scaler, the reference store, the judge, the frame store.
    Also the number of manifest rows data.skip_bad_rows left out (None when it is off)."""
    run_dir = Path(recipe.output.dir) if run_dir is None else run_dir
    _check_batch(recipe, dist)
    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train, dist.local_rank)
    torch.manual_seed(recipe.train.seed)
    examples, rows_skipped, longest = prepare_data(recipe, dist)
    if recipe.model.create_tiny_if_missing and is_tiny_path(recipe.model.name_or_path, TINY_MODEL_DIR) and dist.main:
        from cordlite.models.tiny_checkpoint import ensure_tiny_qwen2audio

        ensure_tiny_qwen2audio(recipe.model.name_or_path)
    dist.barrier()
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt, seed=recipe.train.seed)
    config = getattr(model.config, "text_config", None) or model.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit:  # every prompt that cannot fit, before the first step
        too_long = prompt_length_problems(processor, examples, recipe.data.instruction, recipe.data.system_prompt,
                                          recipe.rollout.max_new_tokens, int(limit))
        if too_long:
            raise ManifestError(clip_problems_message(Path(recipe.data.train_manifest), too_long, what="row(s)"))
    _check_kv_budget(recipe, model, processor, examples, longest, rt)
    params = [p for _, p in trainable_parameters(model)]
    o, t = recipe.optim, recipe.train
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, o.warmup_steps, t.max_steps, o.schedule))
    # fp16 autocast (GPUs without bf16): the loss is scaled before backward so small gradients do not
    # flush to zero, and unscaled before clipping; a step whose gradients overflowed is skipped.
    scaler = torch.amp.GradScaler(rt.device.type) if rt.loss_scaling else None
    base = (identity or {}).get("base") or base_digest(recipe.model.name_or_path, recipe.model.revision)
    store = ReferenceStore(run_dir / "reference_answers.jsonl" if recipe.loss.teacher == "base" else None,
                           write=dist.main, context=reference_context(recipe, base))
    judge = judge_for_recipe(recipe, model, processor.tokenizer, rt, run_dir, write_cache=dist.main)  # self: no second load
    parts = StepParts(recipe, rt, dist, model, processor, Tokens.of(model, processor.tokenizer), store, judge,
                      _frame_store(recipe, model), AudioCache(recipe.data.max_audio_seconds, recipe.data.audio_cache_mb),
                      examples, params, optimizer, scheduler, scaler, linear_sizes(model), peak_flops(rt.device))
    return parts, rows_skipped


def _check_kv_budget(recipe: Recipe, model, processor, examples: list[Example], longest: str | None, rt) -> None:
    """rollout.kv_budget_gb must hold one prompt's rows at the manifest's longest clip, and one reference
    row at its longest question: checked before step 1, not found in it."""
    from cordlite.models.kv_cache import BudgetError, prompts_per_call
    from cordlite.models.sampling import prompt_kv_bytes
    from cordlite.objective.step import kv_budget, rollout_rows

    budget = kv_budget(recipe)
    if budget is None:
        return
    ro, d = recipe.rollout, recipe.data
    clip = next((ex for ex in examples if ex.id == longest), examples[0])
    words = max(examples, key=lambda ex: len(ex.question))
    audio_len = encode_views(processor, [clip], AudioCache(d.max_audio_seconds), d.instruction,
                             d.system_prompt).audio["input_ids"].shape[1]
    text_len = text_views(processor, [words], d.instruction, d.system_prompt)["input_ids"].shape[1]
    rows, view = rollout_rows(recipe)
    try:
        prompts_per_call(prompt_kv_bytes(model, audio_len if view == "audio" else text_len, rows, ro.max_new_tokens,
                                         rt.device), budget)
        prompts_per_call(prompt_kv_bytes(model, text_len, 1, ro.max_new_tokens, rt.device), budget)
    except BudgetError as e:
        raise TrainError(f"{e} (the longest prompt of {d.train_manifest}: {max(audio_len, text_len)} tokens)") from None


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> Path:
    """Run CORD as the recipe says; returns the run directory. `resume` continues the run in
    output.dir from its last intact checkpoint (refused when the recipe changes what the run is);
    `overwrite` starts it again from step 0, removing its results. Without either, a folder holding
    a run's results is refused."""
    if resume and overwrite:
        raise TrainError("--resume and --overwrite: pass one (continue the run, or start it again from step 0)")
    dist = init_distributed(cuda=recipe.model.device != "cpu" and torch.cuda.is_available())
    run_dir = Path(recipe.output.dir)
    check_output_dir(recipe)
    _check_batch(recipe, dist)
    with run_lock(run_dir, dist):
        return _train(recipe, dist, run_dir, resume, overwrite)


def _train(recipe: Recipe, dist: Dist, run_dir: Path, resume: bool, overwrite: bool) -> Path:
    ckpt_root = run_dir / "checkpoints"
    existing, identity = start(recipe, dist, run_dir, resume, overwrite)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    parts, rows_skipped = setup(recipe, dist, run_dir, identity)
    if None in (identity["base"], identity["manifest"]):  # a hub model or tiny set fetched or made by setup
        identity = run_identity(recipe)
        if existing is not None:
            check_same_run(existing, recipe, identity, dist)
    model, rt, t = parts.model, parts.rt, recipe.train
    done = 0
    if existing is not None:
        try:
            done = load_checkpoint(existing, model, parts.optimizer, parts.scheduler, parts.scaler)
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        if dist.main:
            print(f"resuming from {existing} ({done} steps done)", file=sys.stderr)
            if done >= t.max_steps:
                note(f"the checkpoint holds {done} steps and train.max_steps is {t.max_steps}: nothing to train; "
                      "raise train.max_steps to go on")
    metrics_path = run_dir / "metrics.jsonl"
    if dist.main:  # written once the checkpoint has loaded: a refused resume changes nothing
        write_text_atomic(run_dir / "config.yaml", dump_recipe(recipe))
        write_text_atomic(run_dir / "runtime.json", json.dumps({**rt.describe(), "world_size": dist.world,
                                                                 "versions": _versions()}, indent=2) + "\n")
        if rt.loss_scaling and t.mixed_precision == "auto":
            note(f"{rt.describe()['device_name']} has no native bf16: training in fp16 with loss scaling "
                 "(RUN/runtime.json)")
        _trim_metrics(metrics_path, done)
    dist.barrier()
    trackers = Trackers(recipe.output.report_to, run_dir, recipe_to_dict(recipe), done) \
        if dist.main and recipe.output.report_to else None

    meta = {"base_model": recipe.model.name_or_path, "recipe": recipe_to_dict(recipe), "identity": identity}
    progress = None
    if recipe.output.progress and dist.main:
        from tqdm.auto import tqdm

        progress = tqdm(total=t.max_steps, initial=done, desc="cord", unit="step", dynamic_ncols=True)

    def checkpoint(step: int) -> None:
        if dist.main:
            try:
                save_checkpoint(ckpt_root, step, model, parts.optimizer, parts.scheduler, meta,
                                recipe.output.keep_last, parts.scaler)
            except CheckpointError as e:  # non-finite state, or state JSON cannot hold: nothing was written
                last = latest_checkpoint(ckpt_root)
                raise TrainError(f"{e}; the last good checkpoint is {last or 'none'}") from None
        dist.barrier()

    metrics = metrics_path.open("a", encoding="utf-8") if dist.main else None
    with _Signals(dist) as signals:
        parts.check = signals.check
        try:
            for step in range(done, t.max_steps):
                row = run_step(parts, step)
                _check_finite(parts, step + 1, row, ckpt_root)
                done = step + 1
                if dist.main:
                    if rows_skipped is not None:
                        row["rows_skipped"] = rows_skipped
                    _log(metrics, row, progress)
                    if trackers is not None:
                        trackers.log(row)
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
            if trackers is not None:
                trackers.finish()
    if progress is not None:
        progress.close()
    if dist.main:
        save_adapter(model, run_dir / "adapter", {**meta, "steps": done})
    dist.barrier()
    return run_dir


def _check_finite(parts: StepParts, step: int, row: dict, ckpt_root: Path) -> None:
    """Stop at the first step whose update leaves a non-finite adapter weight: it is neither logged nor
    saved, and the last good checkpoint is named."""
    bad = torch.zeros((), device=parts.params[0].device)
    for p in parts.params:
        bad += (~torch.isfinite(p.detach())).sum()
    if not parts.dist.any(bool(bad.item())):
        return
    last = latest_checkpoint(ckpt_root)
    kept = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written before it"
    raise TrainError(f"step {step} made {int(bad.item())} adapter weight(s) NaN or infinite (loss {row.get('loss')}, "
                     f"lr {parts.optimizer.param_groups[0]['lr']:.3g}); nothing of it is logged or saved, and {kept}. "
                     "Start again with a lower optim.lr (or a tighter optim.max_grad_norm) in a new output.dir or with "
                     "--overwrite")


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
