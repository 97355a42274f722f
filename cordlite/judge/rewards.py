"""The judge: does a response reach the same final answer as a reference? (method doc, "Sequence
level", step 3). In training the reference is the model's OWN text-view answer; in `cordlite eval`
it is the dataset's ground truth.

    recipe:  judge: {mode: rules | llm | rules_then_llm, model: self | PATH_OR_HUB_ID, ...}
    check:   cordlite judge-check PAIRS.jsonl --model PATH

  rules           the verifiers of cordlite.judge.verify; a pair they cannot decide counts as different.
  llm             a local LLM reads the question and both answers and replies yes or no, decided
                  greedily and parsed strictly (`parse_verdict`); an unparseable reply is 0 and
                  is counted. A response with no final answer (empty, or truncated without an
                  explicit answer) gets 0 without asking (method doc: truncated rollouts get 0).
  rules_then_llm  rules where they are sure, the LLM for the rest.
The LLM judge is `self`, the frozen base in text mode (the same module inside adapters_off: no
second load, no extra memory), or a separate instruct model loaded once (optionally 4-bit).
The LLM layer (prompt, strict parsing, verdict cache) is cordlite.judge.llm.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from cordlite.judge.llm import JudgeError, LLMJudge, VerdictCache, with_options
from cordlite.judge.verify import has_final_answer, rule_verdict, same_final_answer


def rule_rewards(
    responses: list[str],
    references: list[str],
    choices: list[list[str] | None],
    truncated: list[bool],
    number_tolerance: float = 1e-6,
) -> list[float]:
    """Reward 1.0 per response that matches its reference's final answer, else 0.0 (rules only)."""
    return [
        float(same_final_answer(r, ref, ch, truncated=tr, number_tolerance=number_tolerance))
        for r, ref, ch, tr in zip(responses, references, choices, truncated, strict=True)
    ]


# --------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class JudgeItem:
    question: str
    response: str
    reference: str
    choices: list[str] | None = None
    truncated: bool = False


@dataclass(frozen=True)
class Verdict:
    same: bool
    by: str  # "rules" | "llm"
    reply: str | None = None  # the LLM's raw reply
    unparseable: bool = False
    cached: bool = False


class Judge:
    """Decides a list of items as `mode` says; `llm` is None for mode rules."""

    def __init__(self, mode: str, number_tolerance: float = 1e-6, llm: LLMJudge | None = None):
        if mode != "rules" and llm is None:
            raise JudgeError(f"judge.mode: {mode!r} needs an LLM judge; build it with build_judge")
        self.mode, self.number_tolerance, self.llm = mode, number_tolerance, llm

    def _rules(self, it: JudgeItem) -> bool | None:
        return rule_verdict(it.response, it.reference, it.choices, truncated=it.truncated,
                            number_tolerance=self.number_tolerance)

    def decide(self, items: list[JudgeItem]) -> tuple[list[Verdict], dict[str, float]]:
        verdicts: list[Verdict | None] = [None] * len(items)
        ask: list[int] = []
        for i, it in enumerate(items):
            if self.mode == "rules":
                verdicts[i] = Verdict(self._rules(it) is True, "rules")
            elif not has_final_answer(it.response, it.choices, it.truncated):
                verdicts[i] = Verdict(False, "rules")  # no final answer: 0 without asking
            elif self.mode == "rules_then_llm" and (v := self._rules(it)) is not None:
                verdicts[i] = Verdict(v, "rules")
            else:
                ask.append(i)
        if ask:
            replies = self.llm.ask([(with_options(items[i].question, items[i].choices), items[i].response,
                                     items[i].reference) for i in ask])
            for i, r in zip(ask, replies):
                verdicts[i] = Verdict(r.same is True, "llm", r.reply, r.same is None, r.cached)
        done = [v for v in verdicts if v is not None]
        stats = {
            "judge_by_rules": float(sum(v.by == "rules" for v in done)),
            "judge_by_llm": float(sum(v.by == "llm" for v in done)),
            "judge_cache_hits": float(sum(v.cached for v in done)),
            "judge_unparseable": float(sum(v.unparseable for v in done)),
        }
        return done, stats


# --------------------------------------------------------------------------- building


def _self_context(model, rt) -> Callable[[], ContextManager]:
    """The frozen base: adapters off when the model has any; bf16 autocast on CUDA like the step."""
    from cordlite.models.lora import adapters_off

    @contextlib.contextmanager
    def ctx():
        with contextlib.ExitStack() as stack:
            if hasattr(model, "disable_adapter"):
                stack.enter_context(adapters_off(model))
            if rt is not None and rt.autocast and rt.device.type == "cuda":
                import torch

                stack.enter_context(torch.autocast("cuda", dtype=rt.amp_dtype))
            yield

    return ctx


def load_judge_model(name: str, quantization: str, rt):
    """A separate judge: any causal LM with a chat template (or an audio chat model of a supported family, in text mode)."""
    from transformers import AutoConfig

    from cordlite.config import ModelConfig, QuantizationConfig
    from cordlite.models.load import bnb_config, load_base
    from cordlite.models.runtime import ModelLoadError

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"judge.model: cannot load {name!r} ({e}). Use 'self', a local directory or a "
                             "hub id reachable from this machine.") from None
    from cordlite.models.families import is_family_type

    if is_family_type(config.model_type):  # an audio chat model: loaded as cordlite loads one
        try:
            model, processor = load_base(ModelConfig(name_or_path=name, device=rt.device.type),
                                         QuantizationConfig(mode=quantization), rt)
        except ModelLoadError as e:
            raise ModelLoadError(f"judge.model: {e}") from None
        return model, processor.tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": rt.dtype}
    bnb = bnb_config(QuantizationConfig(mode=quantization, skip_modules=("lm_head",)), rt.compute_dtype)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = {"": rt.device.index or 0} if rt.device.type == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"judge.model: cannot load {name!r} as a causal LM ({e}).") from None
    if bnb is None:
        model.to(rt.device)
    model.eval().requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_judge(cfg, model=None, tokenizer=None, rt=None, *, base_id: str = "",
                cache_path: Path | None = None, write_cache: bool = True) -> Judge:
    """A Judge from a JudgeConfig. `self` reuses `model` (no second load); `base_id` names it in
    the cache key. `cfg.cache` overrides `cache_path`; with neither, verdicts live in memory."""
    if cfg.mode == "rules":
        return Judge("rules", cfg.number_tolerance)
    cache = VerdictCache(Path(cfg.cache) if cfg.cache else cache_path, write_cache)
    if cfg.model == "self":
        if model is None or tokenizer is None:
            raise JudgeError("judge.model: 'self' needs the model being trained or evaluated")
        llm = LLMJudge(model, tokenizer, base_id or "self", max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.batch_size, cache=cache, context=_self_context(model, rt))
    else:
        jm, jt = load_judge_model(cfg.model, cfg.quantization, rt)
        llm = LLMJudge(jm, jt, f"{cfg.model}|{cfg.quantization}", max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.batch_size, cache=cache)
    return Judge(cfg.mode, cfg.number_tolerance, llm)


def judge_for_recipe(recipe, model, tokenizer, rt, run_dir: Path, write_cache: bool = True) -> Judge:
    """The training judge: `self` is the base being trained (adapters off), verdicts cached in
    RUN/judge_cache.jsonl unless judge.cache names another file."""
    return build_judge(recipe.judge, model, tokenizer, rt,
                       base_id=f"{recipe.model.name_or_path}|{recipe.quantization.mode}",
                       cache_path=Path(run_dir) / "judge_cache.jsonl", write_cache=write_cache)
