"""The README.md model card of a merged checkpoint. PURE: dicts in, Markdown out.

It records where the weights came from (base, adapter, recipe, steps), what the run's evaluation
measured (every RUN/eval*/summary.json), and the merge check's figures, so the directory explains
itself when it is copied to a server or a model hub.
"""

from __future__ import annotations

import json

# Recipe fields worth a line on the card; the full recipe is in cordlite_export.json.
_RECIPE_FIELDS = (
    ("lora", "r"), ("lora", "alpha"), ("lora", "target_modules"), ("quantization", "mode"),
    ("loss", "lambda_tok"), ("loss", "lambda_seq"), ("loss", "alpha"), ("loss", "beta"), ("loss", "top_k"),
    ("loss", "teacher"), ("rollout", "group_size"), ("rollout", "max_new_tokens"), ("optim", "lr"),
    ("train", "max_steps"), ("train", "batch_size"), ("data", "train_manifest"), ("data", "instruction"),
)


# Parts of a `cordlite eval` summary that describe settings rather than results.
_EVAL_SKIP = {"model", "adapter", "subset_field", "decoding", "prompt", "judge", "counts", "baseline.per_benchmark",
              "baseline.warnings", "baseline.path"}


def _flatten(obj, prefix: str = "") -> list[tuple[str, object]]:
    if prefix in _EVAL_SKIP:
        return []
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if obj is None else [(prefix, obj)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if len(v) <= 8 else f"{len(v)} values"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _needs_torchvision(family: str | None) -> bool:
    """Whether the family's processor class holds image and video processors (torchvision)."""
    from cordlite.models.families import FAMILIES

    return family in FAMILIES and bool(FAMILIES[family].processor_class)


def model_card(name: str, export: dict, check: dict | None, nf4_check: dict | None,
               evals: dict[str, dict]) -> str:
    """Markdown with YAML front matter (read by model hubs). `export` is cordlite_export.json's content."""
    base = export["base_model"]
    quant = export["quantization"]
    cls = export.get("model_class") or "Qwen2AudioForConditionalGeneration"
    tag = (export.get("family") or "qwen2_audio").replace("_", "-")
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "library_name: transformers",
        f"tags: [cordlite, cord, {tag}, lora-merged, audio-text-to-text]",
        "---",
        "",
        f"# {name}",
        "",
        f"`{base}` with a LoRA adapter trained by cordlite (CORD self-distillation, arXiv 2601.16547) "
        "merged into its weights. Loads with plain transformers; neither cordlite nor peft is needed.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` |",
        f"| adapter | `{export['adapter']}` |",
        f"| training steps | {export.get('steps') if export.get('steps') is not None else 'unknown'} |",
        f"| weights | {export['dtype']}" + (", language model re-quantised to NF4 (bitsandbytes)" if quant == "nf4" else "")
        + " |",
        f"| merged with | cordlite {export.get('cordlite_version', '?')}, transformers {export.get('transformers_version', '?')}, "
        f"peft {export.get('peft_version', '?')} |",
        "",
    ]
    recipe = export.get("recipe") or {}
    rows = [(f"{s}.{k}", recipe[s][k]) for s, k in _RECIPE_FIELDS if k in recipe.get(s, {})]
    if rows:
        lines += ["## Training recipe", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
        lines += ["", "The full recipe is in `cordlite_export.json`.", ""]
    if evals:
        lines += ["## Evaluation", ""]
        for where, summary in evals.items():
            flat = _flatten(summary)
            lines += [f"From `{where}`:", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in flat[:40]]
            if len(flat) > 40:
                lines.append(f"| ... | {len(flat) - 40} more in the file |")
            lines.append("")
    lines += ["## Merge check", ""]
    if check is None:
        lines += ["Not run (`--check-items 0`).", ""]
    else:
        lines += [
            f"On {check['items']} items ({check['source']}), the merged checkpoint reloaded from disk against "
            "base + adapter (unmerged), both greedy:",
            "",
            f"- greedy answers identical: {check['identical_answers']}/{check['items']}"
            + (f", {check['near_tie_flips']} more parted where the reference's top two logits were within twice "
               "the tolerance (a rounding-level near-tie)" if check.get("near_tie_flips") else ""),
            f"- max |logit difference| along the reference answers ({check['answer_tokens']} tokens, whole "
            f"vocabulary): {check['max_abs_logit_diff']:.3g} (largest |logit| {check['logit_scale']:.3g}"
            + (f"; the adapter itself moves logits by up to {check['adapter_effect']:.3g}"
               if check.get("adapter_effect") is not None else "") + ")",
            f"- tolerance ({check['dtype']}): {check['tolerance']:.3g} -> "
            + ("passed" if check["passed"] else "FAILED (exported with --allow-check-failure)"),
            "",
        ]
    if nf4_check is not None:
        lines += [
            "NF4 re-quantisation is lossy; the 4-bit checkpoint against base + adapter on the same items: "
            f"greedy answers identical {nf4_check['identical_answers']}/{nf4_check['items']}, max |logit "
            f"difference| {nf4_check['max_abs_logit_diff']:.3g} (largest |logit| {nf4_check['logit_scale']:.3g}).",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```python",
        f"from transformers import AutoProcessor, {cls}",
        f'model = {cls}.from_pretrained("{name}"'
        + (', device_map="auto")' if quant == "nf4" else ', dtype="auto", device_map="auto")'),
        f'processor = AutoProcessor.from_pretrained("{name}")',
        "```",
        *(["", "Its processor class also holds image and video processors, which need torchvision; without it, "
            "`cordlite.models.families.processors.audio_text_processor` builds the same class for audio and text."]
          if _needs_torchvision(export.get("family")) else []),
        "",
        f"or `cordlite infer --model {name} --audio question.wav`."
        + (" The NF4 checkpoint needs `bitsandbytes` installed." if quant == "nf4" else ""),
    ]
    prompt = export.get("prompt") or {}
    if prompt.get("instruction"):
        lines += ["", f"Trained with the instruction {json.dumps(prompt['instruction'])} after the audio in the "
                  "user turn; `cordlite infer` adds it unless `--question` says otherwise."]
    return "\n".join(lines) + "\n"
