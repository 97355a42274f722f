"""Typed, frozen, loud recipe configuration: every field of a recipe, with its docstring.

A recipe is a YAML file with one mapping per section (model, quantization, lora, data, rollout,
loss, judge, optim, train, output). `cordlite.recipe.load_recipe(path, overrides)` reads it,
applies `--set section.key=value` overrides, and checks every field: unknown keys (with a
did-you-mean), wrong types, out-of-range values and impossible combinations are all collected and
raised as ONE `ConfigError` naming the dotted path, the offending value and a fix.

    cordlite validate recipes/tiny_cpu.yaml --set train.max_steps=10
    cordlite show recipes/qwen2audio_lora.yaml

Defaults follow the CORD paper (arXiv 2601.16547) where it publishes a value; where it is
silent the choice is cordlite's and the field's docstring says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# The only paths where a recipe's create_tiny_if_missing builds the tiny model and the tiny set
# (relative to the working directory, as recipes are): a path the user typed is never filled.
TINY_MODEL_DIR = "cache/tiny-qwen2audio"
TINY_MANIFEST = "cache/tiny-spoken/manifest.jsonl"


def is_tiny_path(path: str, default: str) -> bool:
    """Whether `path` names the tiny model's or tiny set's own place (`default`), spelled either way."""
    return Path(path).expanduser().resolve() == Path(default).resolve()


# The model families cordlite runs (cordlite.models.families.FAMILIES, in the same order; a test
# keeps the two equal): what a recipe's model.family may name.
MODEL_FAMILIES = ("qwen2_audio", "qwen2_5_omni", "gemma4", "audioflamingo3", "musicflamingo")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = ""
    """Local directory or hub id of an audio chat model checkpoint of a family cordlite runs
    (docs/models.md; e.g. Qwen/Qwen2-Audio-7B-Instruct). Its family is read from config.json."""
    family: str | None = None
    """The model family (cordlite.models.families: qwen2_audio, audioflamingo3); unset = detected from
    the checkpoint's config.model_type. Set it only for a checkpoint saved under another model_type."""
    create_tiny_if_missing: bool = False
    """Build the tiny random-init Qwen2-Audio when `name_or_path` is its own path, TINY_MODEL_DIR
    (cache/tiny-qwen2audio), and does not exist yet (CPU demos). Never at another path: a mistyped
    path is an error, not a new model (`cordlite tiny-model DIR` builds one anywhere)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a hub id; ignored for local directories."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: auto picks cuda when available."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the unquantised weights (audio encoder, projector, norms): auto = bf16 on CUDA, fp32 on CPU."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel passed to transformers."""


@dataclass(frozen=True)
class QuantizationConfig:
    mode: Literal["nf4", "int8", "none"] = "nf4"
    """Base weights of the language model: 4-bit NF4, 8-bit (LLM.int8) or unquantised."""
    double_quant: bool = True
    """NF4 only: also quantise the quantisation constants (saves about 0.4 bit per weight)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """NF4 only: dtype of the dequantised matmul; auto = bf16 on CUDA, fp32 on CPU."""
    skip_modules: tuple[str, ...] = ()
    """Full module names left unquantised besides the family's own audio encoder, projector and LM
    head (always unquantised: cordlite.models.families)."""


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input in training mode. 0 for loss.objective: cord (validated): rollouts are
    sampled in eval mode, so with dropout the gradient pass would score the tokens under another
    policy than the one that drew them. The off-policy baselines (sft, forward_kl) may use it."""
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
    """Voice a few dozen arithmetic questions with espeak-ng when `train_manifest` is the tiny set's own
    path, TINY_MANIFEST (cache/tiny-spoken/manifest.jsonl), and does not exist yet. Never at another
    path (`cordlite tiny-data DIR` voices one anywhere)."""
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
    audio_cache_mb: float = 1024.0
    """Decoded clips kept in memory between steps (float32, least recently used dropped first): 1 GB
    holds about 8 hours of 16 kHz audio; 0 reads every clip again each time it is used."""
    skip_bad_rows: bool = False
    """Drop rows that fail the manifest or clip checks instead of stopping (for large real data
    sets): each is listed with its reason in RUN/skipped_rows.jsonl, and every metrics row counts
    them (rows_skipped). A manifest with no good row still stops."""
    frames: str | None = None
    """A frame store of the manifest's clips (safetensors, cordlite.models.audio_view.FrameCache;
    on the testbed OUT/frames/<split>.safetensors, made by `cordlite testbed frames`): the frozen
    audio encoder's output per clip, used instead of reading the audio and running the encoder in
    every step. Needs lora.audio_encoder false; a store made by another encoder or from another
    manifest is refused at start."""


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
    kv_budget_gb: float | None = None
    """KV cache (GB) one generate call may hold: the step's rollouts, the teacher's reference answers.
    Prompts are split into as many calls as the budget needs (the same rows either way: each row's
    draws depend on its key only). Unset: half the memory free at the call (CUDA: the device's)."""
    encode_audio_once: bool = True
    """Run the audio encoder once per prompt and phase of a step (rollouts, gradient pass) and reuse
    its merged embeddings for every row (cordlite.models.audio_view): the same numbers, fewer
    encoder passes. false = the model's own forward on every row (for comparison)."""


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
    kl_direction: Literal["reverse", "forward"] = "reverse"
    """objective cord only: the per-token divergence along the student's own rollouts, reverse
    KL(student || teacher) (paper) or forward KL(teacher || student) (an ablation: on-policy rollouts
    with the off-policy baseline's divergence). objective forward_kl is always forward."""


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
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    """Half-precision autocast on CUDA: auto = bf16 where the GPU has it natively, else fp16 with loss
    scaling (T4, V100); none on CPU. The choice is written to RUN/runtime.json."""


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
    report_to: tuple[Literal["tensorboard", "wandb", "mlflow", "trackio"], ...] = ()
    """Trackers fed every metrics.jsonl row and the resolved recipe (cordlite.tracking):
    tensorboard (RUN/tensorboard/), wandb, mlflow, trackio; each an optional extra
    (pip install 'cordlite[tensorboard]')."""


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


