"""Read, check and write recipes: YAML or a mapping, `--set` overrides, every problem at once.

    recipe = load_recipe("recipes/tiny_cpu.yaml", ["train.max_steps=10"])
    cordlite validate recipes/tiny_cpu.yaml --set train.max_steps=10

Unknown keys (with a did-you-mean) and wrong types come from cordlite.schema; the range and
cross-field checks below add impossible values and combinations and missing paths. All of them
are raised as ONE `ConfigError` naming the dotted path, the offending value and a fix. The
fields themselves, typed and documented, are cordlite.config's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cordlite.config import MODEL_FAMILIES, TINY_MANIFEST, TINY_MODEL_DIR, Recipe, is_tiny_path
from cordlite.schema import ConfigError, build, to_plain

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
    elif check_paths:
        local = Path(m.name_or_path).expanduser()
        tiny = m.create_tiny_if_missing and is_tiny_path(m.name_or_path, TINY_MODEL_DIR)
        if not local.exists() and not tiny:
            # org/name is a hub id, unless "org" is a folder here: then it is a local path mistyped.
            hub_like = _HUB_ID.match(m.name_or_path) and not Path(m.name_or_path.split("/")[0]).is_dir()
            if not hub_like or m.name_or_path.startswith((".", "/", "~")):
                built = (f" (model.create_tiny_if_missing builds the tiny model only at {TINY_MODEL_DIR}; "
                         f"`cordlite tiny-model {m.name_or_path}` builds one there)" if m.create_tiny_if_missing else "")
                org = m.name_or_path.split("/")[0]
                hub = (f" (read as a local path because the folder {org!r} exists here)"
                       if _HUB_ID.match(m.name_or_path) and Path(org).is_dir() else "")
                problems.append(f"model.name_or_path: {m.name_or_path!r} does not exist{hub}; point it at a "
                                f"checkpoint directory or use a hub id (org/name){built}")
        elif local.is_dir() and not (local / "config.json").is_file() and not (tiny and not any(local.iterdir())):
            problems.append(f"model.name_or_path: {m.name_or_path!r} holds no checkpoint (no config.json); point "
                            "it at the directory that has the model's config.json and weights")
    need(r.lora.r > 0, f"lora.r: {r.lora.r} must be > 0")
    need(r.lora.alpha > 0, f"lora.alpha: {r.lora.alpha} must be > 0")
    need(0.0 <= r.lora.dropout < 1.0, f"lora.dropout: {r.lora.dropout} must be in [0, 1)")
    need(len(r.lora.target_modules) > 0 or r.lora.projector or r.lora.audio_encoder,
         "lora.target_modules: list at least one linear layer name (or set lora.projector / "
         "lora.audio_encoder for an audio-side-only adapter)")
    need(m.family is None or m.family in MODEL_FAMILIES,
         f"model.family: {m.family!r} is not a family cordlite runs; use one of {', '.join(MODEL_FAMILIES)} or "
         "leave it unset (detected from the checkpoint)")

    d = r.data
    if not d.train_manifest:
        problems.append("data.train_manifest: required; point it at a manifest JSONL (see data_tools)")
    elif check_paths and not Path(d.train_manifest).expanduser().exists() and not (
            d.create_tiny_if_missing and is_tiny_path(d.train_manifest, TINY_MANIFEST)):
        built = (f" (data.create_tiny_if_missing voices the tiny set only at {TINY_MANIFEST}; "
                 f"`cordlite tiny-data {Path(d.train_manifest).parent}` voices one there)"
                 if d.create_tiny_if_missing else "")
        problems.append(f"data.train_manifest: {d.train_manifest!r} does not exist; make one with "
                        f"`cordlite data tts` (docs/data_tools.md){built}")
    if d.frames is not None:
        need(not r.lora.audio_encoder, f"data.frames: {d.frames!r} holds a frozen encoder's frames, but "
             "lora.audio_encoder: true trains the encoder; set one of them off")
        need(r.rollout.encode_audio_once, f"data.frames: {d.frames!r} needs rollout.encode_audio_once: true "
             "(the stored frames are merged as input embeddings)")
        if check_paths and not Path(d.frames).expanduser().is_file():
            problems.append(f"data.frames: {d.frames!r} does not exist; make it with `cordlite testbed frames "
                            "OUT_DIR --split SPLIT` (OUT_DIR/frames/SPLIT.safetensors) or remove the field")
    need(d.tiny_questions >= 2, f"data.tiny_questions: {d.tiny_questions} must be >= 2")
    need(0 <= d.audio_cache_mb < float("inf"), f"data.audio_cache_mb: {d.audio_cache_mb} must be >= 0 (0 = no cache)")
    need(0 < d.max_audio_seconds <= 30.0,
         f"data.max_audio_seconds: {d.max_audio_seconds} must be in (0, 30] (Qwen2-Audio's encoder window)")

    ro = r.rollout
    need(ro.max_new_tokens >= 1, f"rollout.max_new_tokens: {ro.max_new_tokens} must be >= 1")
    need(ro.distill_temperature > 0, f"rollout.distill_temperature: {ro.distill_temperature} must be > 0")
    need(ro.group_temperature > 0, f"rollout.group_temperature: {ro.group_temperature} must be > 0")
    need(0 < ro.top_p <= 1, f"rollout.top_p: {ro.top_p} must be in (0, 1]")
    need(ro.group_size >= 1, f"rollout.group_size: {ro.group_size} must be >= 1")
    need(ro.kv_budget_gb is None or 0 < ro.kv_budget_gb < float("inf"),
         f"rollout.kv_budget_gb: {ro.kv_budget_gb} must be a positive number of GB (or unset: half the free memory)")

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
    if lo.objective == "cord" and 0 < r.lora.dropout < 1:
        problems.append(f"lora.dropout: {r.lora.dropout} with loss.objective: cord; CORD is on-policy: rollouts "
                        "are sampled without dropout, so the gradient pass must score them without it too (the "
                        "policy that sampled them); set lora.dropout: 0")
    if lo.objective != "cord" and lo.kl_direction != "reverse":
        problems.append(f"loss.kl_direction: {lo.kl_direction!r} applies to loss.objective: cord only "
                        f"({lo.objective} decides its own); remove it")
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
    need(0 < o.lr <= 1, f"optim.lr: {o.lr:g} must be in (0, 1]: AdamW moves every weight by about lr each step, "
         "so above 1 a LoRA adapter only blows up; LoRA runs use 1e-5 to 1e-3 (the default is 3e-5)")
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
    if r.model.device == "cpu" and r.train.mixed_precision in ("bf16", "fp16"):
        problems.append(f"train.mixed_precision: {r.train.mixed_precision!r} autocast is for CUDA; use 'auto' or 'no' "
                        "on CPU")
    if r.model.device == "cpu" and r.quantization.mode == "int8":
        problems.append("quantization.mode: 'int8' needs CUDA in bitsandbytes; use 'nf4' or 'none' on CPU")

    need(bool(r.output.dir), "output.dir: required")
    if check_paths:  # a tracker's package, before the model loads (cordlite.tracking)
        from cordlite.tracking import missing_packages

        for name in missing_packages(list(dict.fromkeys(r.output.report_to))):
            problems.append(f"output.report_to: {name!r} needs the {name} package, which is not installed; "
                                f"pip install 'cordlite[{name}]', or remove it from the list")
    need(r.output.save_every >= 1, f"output.save_every: {r.output.save_every} must be >= 1")
    need(r.output.keep_last >= 1, f"output.keep_last: {r.output.keep_last} must be >= 1")


# Keys earlier cordlite versions read, with what to do now.
REMOVED = {
    ("model", "backend"): "removed: every model loads through transformers, bitsandbytes and peft (unsloth has no "
                          "audio model cordlite runs, docs/benchmarks.md); delete the key",
}


def _removed_keys(raw: dict, problems: list[str]) -> None:
    for (section, key), why in REMOVED.items():
        part = raw.get(section)
        if isinstance(part, dict) and key in part:
            raw[section] = {k: v for k, v in part.items() if k != key}
            problems.append(f"{section}.{key}: {why}")


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


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """raw["a"]["b"] = value for "a.b", creating (copies of) the mappings on the way."""
    keys = [k for k in dotted.split(".") if k]
    node = raw
    for k in keys[:-1]:
        child = node.get(k)
        node[k] = dict(child) if isinstance(child, dict) else {}
        node = node[k]
    node[keys[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], problems: list[str]) -> None:
    """Set each `key=value` override in `raw` (values read as YAML); a malformed one is appended to
    `problems` and skipped, so every mistake is reported together. Used for recipes and TTS jobs."""
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError as e:
            problems += e.problems
            continue
        set_dotted(raw, ".".join(keys), value)


def recipe_from_dict(raw: Any, source: str = "recipe", overrides: list[str] | tuple[str, ...] = (),
                     check_paths: bool = True) -> Recipe:
    """Build and check a Recipe from a plain mapping plus `key=value` overrides."""
    problems: list[str] = []
    raw = dict(raw or {}) if isinstance(raw, dict) else raw
    if isinstance(raw, dict):
        apply_overrides(raw, overrides, problems)
    if isinstance(raw, dict):
        _removed_keys(raw, problems)
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
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                                      "save the recipe as UTF-8"]) from None
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    return recipe_from_dict(raw, str(path), overrides, check_paths)


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_plain(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
