"""Typed, frozen, loud recipe configuration.

A recipe is a YAML file with one mapping per section (model, quantization, lora, data, rollout,
loss, judge, optim, train, output). `load_recipe(path, overrides)` reads it, applies
`--set section.key=value` overrides, and checks every field: unknown keys (with a did-you-mean),
wrong types, out-of-range values and impossible combinations are all collected and raised as
ONE `ConfigError` naming the dotted path, the offending value and a fix.

    cordlite validate recipes/tiny_cpu.yaml --set train.max_steps=10
    cordlite show recipes/qwen2audio_lora.yaml

Defaults follow the CORD paper (arXiv 2601.16547) where it publishes a value; where it is
silent the choice is cordlite's and the field's docstring says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cordlite.schema import ConfigError, build, to_plain

__all__ = ["ConfigError", "Recipe", "load_recipe", "recipe_from_dict", "dump_recipe", "recipe_to_dict"]


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = ""
    """Local directory or hub id of a Qwen2-Audio checkpoint (e.g. Qwen/Qwen2-Audio-7B-Instruct)."""
    create_tiny_if_missing: bool = False
    """Build a tiny random-init Qwen2-Audio at `name_or_path` when it does not exist (CPU demos, tests)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a hub id; ignored for local directories."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: auto picks cuda when available."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the unquantised weights (audio encoder, projector, norms): auto = bf16 on CUDA, fp32 on CPU."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel passed to transformers."""
    backend: Literal["transformers", "unsloth"] = "transformers"
    """How the base is loaded and LoRA attached: transformers + bitsandbytes + peft, or unsloth's
    FastModel (CUDA only, `pip install -e ".[unsloth]"`, and only for a model family unsloth supports;
    anything else stops with a message, never a silent fallback). See docs/benchmarks.md."""


@dataclass(frozen=True)
class QuantizationConfig:
    mode: Literal["nf4", "int8", "none"] = "nf4"
    """Base weights of the language model: 4-bit NF4, 8-bit (LLM.int8) or unquantised."""
    double_quant: bool = True
    """NF4 only: also quantise the quantisation constants (saves about 0.4 bit per weight)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """NF4 only: dtype of the dequantised matmul; auto = bf16 on CUDA, fp32 on CPU."""
    skip_modules: tuple[str, ...] = ("model.audio_tower", "model.multi_modal_projector", "lm_head")
    """Full module names left unquantised. The audio encoder and projector must stay here."""


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input in training mode."""
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    """Linear layer names adapted, inside the language model only (never the audio encoder)."""
    projector: bool = False
    """Also adapt the audio projector (multi_modal_projector.linear) with LoRA. It only feeds the
    audio view, so the text view (and the teacher) are untouched by that part of the adapter."""
    audio_encoder: bool = False
    """Also adapt the audio encoder's attention and feed-forward linears (q/k/v/out_proj, fc1, fc2)
    with LoRA. Like the projector it feeds the audio view only. With `target_modules: []` the
    adapter is audio-side only and the text view is exactly the base's: the choice when the gap
    is in what the model hears rather than in how it reasons (docs/testbed.md)."""


@dataclass(frozen=True)
class DataConfig:
    train_manifest: str = ""
    """JSONL manifest: one object per line with id, audio_path (relative to the manifest), question."""
    create_tiny_if_missing: bool = False
    """Voice a few dozen arithmetic questions with espeak-ng at `train_manifest` if it does not exist."""
    tiny_questions: int = 48
    """How many questions the tiny set has (only with create_tiny_if_missing)."""
    instruction: str = ""
    """Text placed after the question (text view) or the audio (audio view) in the user turn."""
    system_prompt: str | None = None
    """System message; None keeps the chat template's default."""
    max_audio_seconds: float = 30.0
    """Clips longer than this are refused at load (Qwen2-Audio's encoder sees at most 30 s)."""
    shuffle: bool = True
    """Seeded reshuffle every epoch; False walks the manifest in order."""


@dataclass(frozen=True)
class RolloutConfig:
    max_new_tokens: int = 200
    """Generation budget per rollout (paper: 200)."""
    distill_temperature: float = 1.0
    """Temperature of the one rollout per prompt that the token-level KL trains on (paper: 1.0)."""
    group_size: int = 4
    """N rollouts per prompt for the GRPO term (paper: 4)."""
    group_temperature: float = 1.5
    """Temperature of the N GRPO rollouts (paper: 1.5)."""
    share_rollouts: bool = False
    """cordlite option: train the token-level KL on the N group rollouts instead of a separate one."""
    top_p: float = 1.0
    """Nucleus sampling; 1.0 samples the full distribution, which on-policy training assumes."""
    reference_decoding: Literal["greedy", "sample"] = "greedy"
    """Text-view reference answer: greedy (cordlite default: the teacher's best answer) or sampled at T=1."""


@dataclass(frozen=True)
class LossConfig:
    objective: Literal["cord", "sft", "forward_kl"] = "cord"
    """cord: the student's own audio-view rollouts (on-policy), weighted reverse KL + GRPO. The
    paper's off-policy baselines train along the TEACHER's text-view rollouts instead (group_size + 1
    per prompt at distill_temperature, the same number of sequences as cord): sft maximises their
    log-likelihood under the audio view, forward_kl minimises KL(teacher || student) per token
    (weighted by alpha/beta/top_k; 1/1 = uniform). Both need lambda_seq: 0 (no student rollouts)."""
    lambda_tok: float = 1.0
    """Weight of the importance-weighted reverse KL (paper: 1)."""
    lambda_seq: float = 1.0
    """Weight of the GRPO sequence term (paper: 1)."""
    alpha: float = 2.0
    """Divergence weight for the top-K positions (paper: 2; 1 = uniform, the OPD ablation)."""
    beta: float = 2.0
    """Position weight at the first token, decaying linearly to 1 at the last (paper: 2)."""
    top_k: int = 20
    """Number of highest-divergence positions per sequence weighted by alpha (paper: 20)."""
    tok_reduction: Literal["sum", "mean"] = "sum"
    """Per sequence, sum the weighted KL over tokens (paper) or average it per token."""
    teacher: Literal["base", "current"] = "base"
    """Text-view teacher: the frozen base (adapters off) or the current model (adapters on, no grad)."""
    kl_chunk_size: int = 64
    """Positions per chunk of the full-vocabulary log-softmax; bounds memory at [n, chunk, V]."""


@dataclass(frozen=True)
class JudgeConfig:
    mode: Literal["rules", "llm", "rules_then_llm"] = "rules"
    """How rewards are decided: rule-based final-answer equivalence, a local LLM judge, or rules where
    they are sure and the LLM judge for the rest (the paper's judge is unpublished; see docs/evaluation.md)."""
    number_tolerance: float = 1e-6
    """Relative tolerance when two final answers are numbers."""
    model: str = "self"
    """LLM judge: 'self' = the frozen base in text mode (adapters off, no extra memory), or a local
    directory / hub id of a separate instruct model with a chat template."""
    quantization: Literal["nf4", "int8", "none"] = "none"
    """Weights of a separate judge model (not used with model: self, which is the base as loaded)."""
    max_new_tokens: int = 16
    """Greedy tokens the LLM judge may reply with; its verdict must be the first word (yes/no)."""
    batch_size: int = 16
    """Judge prompts per generate call."""
    cache: str | None = None
    """JSONL cache of LLM verdicts by content hash; None = OUTPUT_DIR/judge_cache.jsonl."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-5
    """AdamW learning rate (paper: 3e-5)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to lr."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate decay after warm-up (the paper does not publish one)."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 3000
    """Optimizer steps (paper: 3000)."""
    batch_size: int = 1
    """Prompts per optimizer step (each gets 1 + group_size rollouts)."""
    micro_batch_size: int = 1
    """Prompts per forward/backward; batch_size must be a multiple (gradient accumulation)."""
    seed: int = 0
    """Seed of data order, LoRA init and per-step sampling."""
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    """Recompute activations in backward: auto = on with CUDA, off on CPU."""
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """bf16 autocast: auto = bf16 on CUDA, none on CPU."""


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs/cord"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/."""
    save_every: int = 100
    """Save a resumable checkpoint every k steps (and always at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted."""
    progress: bool = True
    """Show a progress bar with live loss and reward."""


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check(r: Recipe, problems: list[str], check_paths: bool = True) -> None:
    """Range and cross-field checks, appended to `problems`; `check_paths` also checks files exist."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    m = r.model
    if not m.name_or_path:
        problems.append("model.name_or_path: required; set a local checkpoint directory or a hub id "
                        "such as Qwen/Qwen2-Audio-7B-Instruct")
    elif check_paths and not Path(m.name_or_path).expanduser().exists() and not m.create_tiny_if_missing:
        if not _HUB_ID.match(m.name_or_path) or m.name_or_path.startswith((".", "/", "~")):
            problems.append(f"model.name_or_path: {m.name_or_path!r} does not exist; point it at a "
                            "checkpoint directory, use a hub id (org/name), or set "
                            "model.create_tiny_if_missing: true for a tiny test model")
    need(r.lora.r > 0, f"lora.r: {r.lora.r} must be > 0")
    need(r.lora.alpha > 0, f"lora.alpha: {r.lora.alpha} must be > 0")
    need(0.0 <= r.lora.dropout < 1.0, f"lora.dropout: {r.lora.dropout} must be in [0, 1)")
    need(len(r.lora.target_modules) > 0 or r.lora.projector or r.lora.audio_encoder,
         "lora.target_modules: list at least one linear layer name (or set lora.projector / "
         "lora.audio_encoder for an audio-side-only adapter)")
    for needed in ("model.audio_tower", "model.multi_modal_projector"):
        need(r.quantization.mode == "none" or needed in r.quantization.skip_modules,
             f"quantization.skip_modules: must contain {needed!r} (the audio encoder and projector "
             "stay unquantised and frozen)")

    d = r.data
    if not d.train_manifest:
        problems.append("data.train_manifest: required; point it at a manifest JSONL (see data_tools)")
    elif check_paths and not Path(d.train_manifest).expanduser().exists() and not d.create_tiny_if_missing:
        problems.append(f"data.train_manifest: {d.train_manifest!r} does not exist; make one with "
                        "data_tools or set data.create_tiny_if_missing: true")
    if d.create_tiny_if_missing and Path(d.train_manifest).name != "manifest.jsonl":
        problems.append(f"data.train_manifest: {d.train_manifest!r} must be named manifest.jsonl when "
                        "data.create_tiny_if_missing is true (the tiny set is written as DIR/manifest.jsonl)")
    need(d.tiny_questions >= 2, f"data.tiny_questions: {d.tiny_questions} must be >= 2")
    need(0 < d.max_audio_seconds <= 30.0,
         f"data.max_audio_seconds: {d.max_audio_seconds} must be in (0, 30] (Qwen2-Audio's encoder window)")

    ro = r.rollout
    need(ro.max_new_tokens >= 1, f"rollout.max_new_tokens: {ro.max_new_tokens} must be >= 1")
    need(ro.distill_temperature > 0, f"rollout.distill_temperature: {ro.distill_temperature} must be > 0")
    need(ro.group_temperature > 0, f"rollout.group_temperature: {ro.group_temperature} must be > 0")
    need(0 < ro.top_p <= 1, f"rollout.top_p: {ro.top_p} must be in (0, 1]")
    need(ro.group_size >= 1, f"rollout.group_size: {ro.group_size} must be >= 1")

    lo = r.loss
    need(lo.lambda_tok >= 0 and lo.lambda_seq >= 0, "loss.lambda_tok / loss.lambda_seq: must be >= 0")
    need(lo.lambda_tok > 0 or lo.lambda_seq > 0,
         "loss.lambda_tok and loss.lambda_seq: both are 0, nothing would be trained; set one > 0")
    need(lo.alpha > 0, f"loss.alpha: {lo.alpha} must be > 0 (1 = uniform)")
    need(lo.beta > 0, f"loss.beta: {lo.beta} must be > 0 (1 = uniform)")
    need(lo.top_k >= 0, f"loss.top_k: {lo.top_k} must be >= 0")
    need(lo.kl_chunk_size >= 1, f"loss.kl_chunk_size: {lo.kl_chunk_size} must be >= 1")
    if lo.lambda_seq > 0 and ro.group_size < 2:
        problems.append(f"rollout.group_size: {ro.group_size} with loss.lambda_seq > 0; GRPO needs at "
                        "least 2 rollouts per prompt (advantage r - mean is 0 for one), set >= 2 "
                        "(paper: 4) or loss.lambda_seq: 0")
    if lo.objective != "cord" and (lo.lambda_seq > 0 or ro.share_rollouts):
        problems.append(f"loss.objective: {lo.objective} trains along the teacher's text-view rollouts, where "
                        "GRPO has no student rollouts to score; set loss.lambda_seq: 0 and "
                        "rollout.share_rollouts: false (or loss.objective: cord)")
    if lo.objective != "cord" and lo.lambda_tok == 0:
        problems.append(f"loss.objective: {lo.objective} with loss.lambda_tok: 0 trains nothing; set lambda_tok > 0")
    elif ro.share_rollouts and lo.lambda_seq == 0:
        problems.append("rollout.share_rollouts: true needs the group rollouts of loss.lambda_seq > 0; "
                        "set share_rollouts: false")
    j = r.judge
    need(j.number_tolerance >= 0, "judge.number_tolerance: must be >= 0")
    need(j.max_new_tokens >= 1, f"judge.max_new_tokens: {j.max_new_tokens} must be >= 1")
    need(j.batch_size >= 1, f"judge.batch_size: {j.batch_size} must be >= 1")
    if not j.model:
        problems.append("judge.model: empty; use 'self' or the path / hub id of an instruct model")
    elif j.model == "self" and j.quantization != "none":
        problems.append(f"judge.quantization: {j.quantization!r} with judge.model: self; the self judge is the "
                        "base as loaded (see quantization.mode), so leave judge.quantization: none")
    elif (j.model != "self" and j.mode != "rules" and check_paths and not Path(j.model).expanduser().exists()
          and (not _HUB_ID.match(j.model) or j.model.startswith((".", "/", "~")))):
        problems.append(f"judge.model: {j.model!r} does not exist; use 'self', a local model directory or a hub id")
    if r.model.device == "cpu" and j.quantization == "int8":
        problems.append("judge.quantization: 'int8' needs CUDA in bitsandbytes; use 'nf4' or 'none' on CPU")

    o = r.optim
    need(o.lr > 0, f"optim.lr: {o.lr} must be > 0")
    need(o.weight_decay >= 0, f"optim.weight_decay: {o.weight_decay} must be >= 0")
    need(all(0 <= b < 1 for b in o.betas), f"optim.betas: {list(o.betas)} must be in [0, 1)")
    need(o.eps > 0, f"optim.eps: {o.eps} must be > 0")
    need(o.max_grad_norm >= 0, f"optim.max_grad_norm: {o.max_grad_norm} must be >= 0 (0 = no clipping)")
    need(o.warmup_steps >= 0, f"optim.warmup_steps: {o.warmup_steps} must be >= 0")

    t = r.train
    need(t.max_steps >= 1, f"train.max_steps: {t.max_steps} must be >= 1")
    need(t.batch_size >= 1, f"train.batch_size: {t.batch_size} must be >= 1")
    need(t.micro_batch_size >= 1, f"train.micro_batch_size: {t.micro_batch_size} must be >= 1")
    if t.batch_size >= 1 and t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size:
        problems.append(f"train.batch_size: {t.batch_size} is not a multiple of train.micro_batch_size "
                        f"{t.micro_batch_size}; make it one (e.g. batch_size: "
                        f"{max(1, t.batch_size // t.micro_batch_size) * t.micro_batch_size})")
    need(o.warmup_steps <= t.max_steps,
         f"optim.warmup_steps: {o.warmup_steps} exceeds train.max_steps {t.max_steps}")
    if r.model.device == "cpu" and r.train.mixed_precision == "bf16":
        problems.append("train.mixed_precision: 'bf16' autocast is for CUDA; use 'auto' or 'no' on CPU")
    if r.model.device == "cpu" and r.quantization.mode == "int8":
        problems.append("quantization.mode: 'int8' needs CUDA in bitsandbytes; use 'nf4' or 'none' on CPU")
    if r.model.backend == "unsloth" and r.model.device == "cpu":
        problems.append("model.backend: 'unsloth' runs on NVIDIA GPUs only, but model.device is 'cpu'; "
                        "use backend: transformers on CPU, or device: cuda")
    if r.model.backend == "unsloth" and (r.lora.projector or r.lora.audio_encoder or not r.lora.target_modules):
        problems.append("lora.projector / lora.audio_encoder: unsloth adapts the language model only; set both "
                        "false (with lora.target_modules listed) or use backend: transformers")
    if r.model.backend == "unsloth" and r.quantization.mode == "int8":
        problems.append("model.backend: 'unsloth' loads 4-bit (quantization.mode: nf4) or 16-bit (none), not "
                        "'int8'; change quantization.mode or use backend: transformers")

    need(bool(r.output.dir), "output.dir: required")
    need(r.output.save_every >= 1, f"output.save_every: {r.output.save_every} must be >= 1")
    need(r.output.keep_last >= 1, f"output.keep_last: {r.output.keep_last} must be >= 1")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.max_steps=10' -> (['train', 'max_steps'], 10); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError("--set", [f"{text!r}: expected key=value, e.g. train.max_steps=10"])
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError("--set", [f"{text!r}: empty key"])
    value = yaml.safe_load(raw) if raw.strip() else ""
    return keys, value


def recipe_from_dict(raw: Any, source: str = "recipe", overrides: list[str] | tuple[str, ...] = (),
                     check_paths: bool = True) -> Recipe:
    """Build and check a Recipe from a plain mapping plus `key=value` overrides."""
    problems: list[str] = []
    raw = dict(raw or {}) if isinstance(raw, dict) else raw
    if isinstance(raw, dict):
        for text in overrides:
            try:
                keys, value = parse_override(text)
            except ConfigError as e:
                problems += e.problems
                continue
            node = raw
            for k in keys[:-1]:
                child = node.get(k)
                child = dict(child) if isinstance(child, dict) else {}
                node[k] = child
                node = child
            node[keys[-1]] = value
    recipe = build(Recipe, raw, "", problems)
    # Range checks run too, so one message lists everything; a field that already failed to
    # parse holds its default, so checks that name it are dropped rather than reported twice.
    bad_fields = {p.split(":", 1)[0].split("[", 1)[0] for p in problems}
    checks: list[str] = []
    _check(recipe, checks, check_paths)
    problems += [c for c in checks if c.split(":", 1)[0] not in bad_fields]
    if problems:
        raise ConfigError(source, problems)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_paths: bool = True) -> Recipe:
    """Read a YAML recipe, apply overrides, validate; raise ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found; pass the path of a recipe YAML such as recipes/tiny_cpu.yaml"])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    return recipe_from_dict(raw, str(path), overrides, check_paths)


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_plain(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
