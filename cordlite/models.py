"""Load the base LALM (4-bit, 8-bit or unquantised), attach LoRA, and switch adapters off.

Teacher and student are ONE set of base weights: the student is the model with its LoRA
adapters on, the teacher the same model inside `adapters_off(model)`. There is never a second
copy of the base. The audio encoder and projector stay frozen and unquantised.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from cordlite.config import LoraConfig, ModelConfig, QuantizationConfig, TrainConfig

ADAPTER_META = "cordlite_adapter.json"
AUDIO_SPECIAL_TOKENS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded; the message names model.name_or_path."""


@dataclass(frozen=True)
class Runtime:
    """Resolved device and precision of a run."""

    device: torch.device
    dtype: torch.dtype  # unquantised weights
    compute_dtype: torch.dtype  # 4-bit matmuls
    autocast: bool  # bf16 autocast around forward passes
    gradient_checkpointing: bool


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_runtime(model: ModelConfig, quant: QuantizationConfig, train: TrainConfig, local_rank: int = 0) -> Runtime:
    """Device and precision; `local_rank` picks this process's GPU under a multi-process launch."""
    if model.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device: 'cuda' but torch sees no CUDA device; use device: auto or cpu")
    use_cuda = model.device == "cuda" or (model.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    on_cuda = device.type == "cuda"
    dtype = _DTYPES[model.dtype] if model.dtype != "auto" else (torch.bfloat16 if on_cuda else torch.float32)
    compute = _DTYPES[quant.compute_dtype] if quant.compute_dtype != "auto" else (torch.bfloat16 if on_cuda else torch.float32)
    autocast = train.mixed_precision == "bf16" or (train.mixed_precision == "auto" and on_cuda)
    ckpt = train.gradient_checkpointing == "on" or (train.gradient_checkpointing == "auto" and on_cuda)
    return Runtime(device, dtype, compute, autocast, ckpt)


def _bnb_config(quant: QuantizationConfig, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quant.mode == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=list(quant.skip_modules),
        )
    if quant.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(quant.skip_modules))
    return None


def load_base(model_cfg: ModelConfig, quant: QuantizationConfig, rt: Runtime):
    """Load Qwen2AudioForConditionalGeneration and its processor; every base weight frozen."""
    if model_cfg.backend == "unsloth":
        from cordlite.unsloth_backend import load_unsloth  # never imported unless asked for

        return load_unsloth(model_cfg, quant, rt)
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    path = model_cfg.name_or_path
    if model_cfg.create_tiny_if_missing:
        from cordlite.tiny_model import ensure_tiny_qwen2audio

        ensure_tiny_qwen2audio(path)
    kwargs: dict = {"dtype": rt.dtype, "attn_implementation": model_cfg.attn_implementation}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    bnb = _bnb_config(quant, rt.compute_dtype)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = {"": rt.device.index or 0} if rt.device.type == "cuda" else {"": "cpu"}
    try:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(path, **({"revision": model_cfg.revision} if model_cfg.revision else {}))
    except OSError as e:
        raise ModelLoadError(f"model.name_or_path: cannot load {path!r} ({e}). Use a local checkpoint directory "
                             "or a hub id reachable from this machine (e.g. Qwen/Qwen2-Audio-7B-Instruct).") from None
    if bnb is None:
        model.to(rt.device)
    processor.tokenizer.padding_side = "left"  # completions must start at the same column in both views
    for p in model.parameters():
        p.requires_grad_(False)
    if rt.device.type == "cpu":
        _cpu_4bit_trainable(model)
    return model, processor


def _cpu_4bit_trainable(model: torch.nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights into an inference-only layout
    on the first no-grad pass, after which backward fails. Training needs the plain layout."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


AUDIO_ENCODER_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_target_regex(names: tuple[str, ...], projector: bool = False, audio_encoder: bool = False) -> str:
    """LoRA on the language model's linear layers `names` (the audio encoder has q/k/v_proj too,
    so the match is anchored under language_model), plus the audio projector's linear layer when
    `projector` and the audio encoder's linears when `audio_encoder` (both feed the audio view only)."""
    parts = []
    if names:
        parts.append(r".*\.language_model\..*\.(" + "|".join(map(str, names)) + r")")
    if projector:
        parts.append(r".*\.multi_modal_projector\.linear")
    if audio_encoder:
        parts.append(r".*\.audio_tower\.layers\.\d+\.(.*\.)?(" + "|".join(AUDIO_ENCODER_LINEARS) + r")")
    if not parts:
        raise ValueError("lora: nothing to adapt (empty target_modules, projector and audio_encoder off)")
    return "(" + "|".join(parts) + ")$"


def attach_lora(model, lora: LoraConfig, rt: Runtime, seed: int = 0):
    """Wrap the frozen base with trainable LoRA adapters (peft); returns the PeftModel."""
    if getattr(model, "_cordlite_backend", None) == "unsloth":  # set by cordlite.unsloth_backend.load_unsloth
        from cordlite.unsloth_backend import attach_lora_unsloth

        return attach_lora_unsloth(model, lora, rt, seed)
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(seed)  # LoRA A init
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora.target_modules, lora.projector, lora.audio_encoder),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    n_adapted = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A"))
    if n_adapted == 0:
        raise RuntimeError(f"lora.target_modules {list(lora.target_modules)} matched no linear layer of the "
                           "language model; use names such as q_proj, v_proj")
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # adapters train in fp32; autocast handles the matmuls
    if rt.gradient_checkpointing:
        peft_model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return peft_model


@contextlib.contextmanager
def adapters_off(model) -> Iterator[None]:
    """The teacher: the same base weights with every LoRA adapter bypassed."""
    with model.disable_adapter():
        yield


def base_of(model):
    """The underlying Qwen2AudioForConditionalGeneration (inside a PeftModel or not)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_adapter(model, out_dir: str | Path, meta: dict) -> Path:
    """Save the adapter in peft format plus cordlite metadata, atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    base = meta.get("base_model")
    if isinstance(base, str) and Path(base).expanduser().exists():
        # A relative path means nothing once the cwd changes: keep the absolute one for load_adapter's check.
        meta = {**meta, "base_model_resolved": str(Path(base).expanduser().resolve())}
    (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, default=str))
    replace_dir(tmp, out_dir)
    return out_dir


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an older one is removed only after the move is ready."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Load saved LoRA weights into the attached adapter (resume); the base is untouched."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter weights not found; the checkpoint is incomplete")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{path}: adapter does not fit this model (unexpected keys such as {unexpected[:3]})")


class AdapterBaseMismatch(RuntimeError):
    """An adapter was trained on another base model than the one it is being loaded onto."""


def adapter_metadata(adapter_dir: str | Path) -> dict:
    """What cordlite recorded with an adapter: cordlite_adapter.json (final adapter), else the
    state.json of the checkpoint it sits in; {} for a foreign peft adapter."""
    adapter_dir = Path(adapter_dir)
    for path in (adapter_dir / ADAPTER_META, adapter_dir.parent / "state.json"):
        if path.is_file():
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise RuntimeError(f"{path}: unreadable adapter metadata ({e}); re-save the adapter") from None
            if isinstance(meta, dict) and meta.get("base_model"):
                return meta
    return {}


def recorded_base_models(adapter_dir: str | Path) -> list[str]:
    """The base model ids an adapter records: cordlite's metadata first, then peft's adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    meta = adapter_metadata(adapter_dir)
    ids = [meta[k] for k in ("base_model", "base_model_resolved") if isinstance(meta.get(k), str)]
    config = adapter_dir / "adapter_config.json"
    if config.is_file():
        try:
            peft_base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            peft_base = None
        if isinstance(peft_base, str) and peft_base and not ids:
            ids.append(peft_base)
    return ids


def normalise_model_id(name: str) -> str:
    """A local checkpoint as its absolute resolved path (symlinks, `..` and `~` removed); a hub id as is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name.rstrip("/")


def check_adapter_base(adapter_dir: str | Path, base_id: str) -> None:
    """Raise AdapterBaseMismatch when the adapter records a base other than `base_id`."""
    recorded = recorded_base_models(adapter_dir)
    if not recorded:
        return  # a foreign adapter without any record: nothing to compare against
    if normalise_model_id(base_id) in {normalise_model_id(r) for r in recorded}:
        return
    raise AdapterBaseMismatch(
        f"adapter {adapter_dir} was trained on base model {recorded[0]!r}, not on {base_id!r}: LoRA deltas only "
        f"make sense on the weights they were trained on. Load the base {recorded[0]!r}; if {base_id!r} is the "
        "same checkpoint in another place, pass --allow-base-mismatch (allow_base_mismatch=True)")


def load_adapter(model, adapter_dir: str | Path, allow_base_mismatch: bool = False, is_trainable: bool = False):
    """Wrap `model` with a saved peft adapter, refusing one recorded for another base (see check_adapter_base)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; pass a run directory's adapter/ or a "
                                "checkpoints/step_N/adapter directory")
    if not allow_base_mismatch:
        check_adapter_base(adapter_dir, model.name_or_path)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)


def audio_special_token_ids(tokenizer) -> list[int]:
    """Token ids that must never be sampled: an audio placeholder in a completion breaks the next forward."""
    ids = []
    for tok in AUDIO_SPECIAL_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return ids


def end_token_ids(model, tokenizer) -> list[int]:
    """Ids that end an answer: the generation config's eos ids plus <|im_end|> and <|endoftext|>."""
    ids: list[int] = []
    eos = base_of(model).generation_config.eos_token_id
    if eos is not None:
        ids += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids
