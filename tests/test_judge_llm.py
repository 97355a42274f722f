"""The LLM judge: strict reply parsing, the content-hash cache, mode routing, the `self` judge
(adapters off, same module), judge-check, and a training step with judge.mode: llm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cordlite.config import JudgeConfig, LoraConfig, ModelConfig, QuantizationConfig, TrainConfig
from cordlite.judge.rewards import Judge, JudgeItem, build_judge
from cordlite.judge.llm import TEMPLATE_VERSION, LLMJudge, VerdictCache, cache_key, parse_verdict
from cordlite.judge.check import confusion

# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("reply, verdict", [
    ("Yes.", True),
    ("yes", True),
    ("**yes**", True),
    ("  YES, they match", True),
    ("No, because the first answer is 12 and the second is 13.", False),
    ("no", False),
    ("`No`", False),
    ("The answers match: yes", True),
    ("Verdict - no.", False),
    ("Answer: Yes", True),
    ("maybe", None),
    ("yes or no", True),  # the first word decides
    ("I would say yes", None),  # a verdict that is neither first nor after a colon at the end
    ("yesterday", None),
    ("", None),
    ("The answers match: yes, mostly", None),
])
def test_parse_verdict_is_strict(reply: str, verdict):
    assert parse_verdict(reply) is verdict


def test_cache_key_depends_on_every_part():
    base = cache_key("m", "q", "a", "b")
    assert base == cache_key("m", "q", "a", "b")
    assert len({base, cache_key("m2", "q", "a", "b"), cache_key("m", "q2", "a", "b"), cache_key("m", "q", "a2", "b"),
                cache_key("m", "q", "a", "b2"), cache_key("m", "q", "b", "a")}) == 6


def test_verdict_cache_persists_and_survives_a_cut_line(tmp_path: Path):
    path = tmp_path / "cache.jsonl"
    c = VerdictCache(path)
    c.put_many([{"key": "k1", "same": True, "reply": "yes"}, {"key": "k2", "same": None, "reply": "hm"}])
    with path.open("a") as f:
        f.write('{"key": "k3", "same": tr')  # killed mid-write
    again = VerdictCache(path)
    assert again.get("k1")["same"] is True and again.get("k2")["same"] is None and again.get("k3") is None
    reader = VerdictCache(path, write=False)
    reader.put_many([{"key": "k4", "same": False, "reply": "no"}])
    assert reader.get("k4") is not None and VerdictCache(path).get("k4") is None


def test_confusion_counts_by_hand():
    labels = [True, True, True, False, False, False]
    predicted = [True, False, False, True, False, False]
    unparseable = [False, True, False, False, False, True]
    c = confusion(labels, predicted, unparseable)
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (1, 2, 1, 2)
    assert c["accuracy"] == pytest.approx(3 / 6) and c["precision"] == 0.5 and c["recall"] == pytest.approx(1 / 3)
    assert c["unparseable"] == 2 and c["unparseable_labelled_same"] == 1


def test_judge_config_fields_and_loud_errors():
    from cordlite.schema import ConfigError
    from cordlite.recipe import recipe_from_dict

    raw = {"model": {"name_or_path": "Qwen/Qwen2-Audio-7B-Instruct", "device": "cpu"},
           "data": {"train_manifest": "data/manifest.jsonl"}}
    ok = recipe_from_dict({**raw, "judge": {"mode": "rules_then_llm", "model": "Qwen/Qwen2.5-1.5B-Instruct",
                                            "quantization": "nf4", "cache": "runs/judge.jsonl"}}, check_paths=False)
    assert ok.judge.mode == "rules_then_llm" and ok.judge.cache == "runs/judge.jsonl"
    assert recipe_from_dict(raw, check_paths=False).judge == JudgeConfig()  # rules, self, none, 16, 16, None
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**raw, "judge": {"mode": "llm_then_rules", "max_new_tokens": 0, "batch_size": 0,
                                           "quantization": "int8"}}, check_paths=False)
    text = str(info.value)
    assert "judge.mode: 'llm_then_rules' is not one of 'rules' | 'llm' | 'rules_then_llm'" in text
    assert "judge.max_new_tokens: 0 must be >= 1" in text and "judge.batch_size: 0 must be >= 1" in text
    assert "judge.quantization: 'int8' with judge.model: self" in text
    with pytest.raises(ConfigError, match="judge.model: './missing-judge' does not exist"):
        recipe_from_dict({**raw, "judge": {"mode": "llm", "model": "./missing-judge"}}, check_paths=True)


# --------------------------------------------------------------------------- on the tiny model


@pytest.fixture(scope="module")
def tiny_peft(tiny_model_dir):
    """The tiny base with a LoRA adapter whose B is non-zero, so adapters on != adapters off."""
    from cordlite.models.lora import attach_lora
    from cordlite.models.load import load_base
    from cordlite.models.runtime import resolve_runtime

    mc, qc = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"), QuantizationConfig(mode="none")
    rt = resolve_runtime(mc, qc, TrainConfig())
    model, processor = load_base(mc, qc, rt)
    model = attach_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), rt)
    g = torch.Generator().manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    return model.eval(), processor.tokenizer, rt


class _CountGenerate:
    """Counts generate() calls and the prompts they carried, by wrapping the real method."""

    def __init__(self, model, monkeypatch):
        self.calls: list[int] = []
        real = model.generate

        def generate(*args, **kwargs):
            self.calls.append(kwargs["input_ids"].shape[0])
            return real(*args, **kwargs)

        monkeypatch.setattr(model, "generate", generate)


def test_cache_second_call_does_not_run_the_model(tiny_peft, tmp_path, monkeypatch):
    model, tok, rt = tiny_peft
    spy = _CountGenerate(model, monkeypatch)
    path = tmp_path / "judge_cache.jsonl"
    judge = build_judge(JudgeConfig(mode="llm", batch_size=2), model, tok, rt, base_id="tiny|none", cache_path=path)
    triples = [("What is 7 plus 5?", "12", "The answer is 12."), ("Capital of Italy?", "Rome", "B. Rome"),
               ("What is 7 plus 5?", "12", "The answer is 12."), ("What is 2 plus 2?", "4", "five")]
    first = judge.llm.ask(triples)
    assert spy.calls == [2, 1]  # 3 distinct pairs in batches of 2; the repeat is asked once
    assert not any(r.cached for r in first) and first[2].reply == first[0].reply  # the repeat shares the verdict
    assert len(path.read_text().splitlines()) == 3
    second = judge.llm.ask(triples)
    assert spy.calls == [2, 1]  # not one more generate call
    assert all(r.cached for r in second) and [r.reply for r in second] == [r.reply for r in first]
    # A new judge on the same file (a resumed run) does not ask either.
    fresh = build_judge(JudgeConfig(mode="llm"), model, tok, rt, base_id="tiny|none", cache_path=path)
    assert all(r.cached for r in fresh.llm.ask(triples)) and spy.calls == [2, 1]
    # Another judge model id is another key: asked again.
    other = build_judge(JudgeConfig(mode="llm"), model, tok, rt, base_id="tiny|nf4", cache_path=path)
    other.llm.ask(triples[:1])
    assert spy.calls == [2, 1, 1]
    row = json.loads(path.read_text().splitlines()[0])
    assert row["template"] == TEMPLATE_VERSION and row["model"] == "tiny|none"


def test_self_judge_is_the_base_with_adapters_off(tiny_peft, monkeypatch):
    from cordlite.models.lora import adapters_off
    from cordlite.models.sampling import sample

    model, tok, rt = tiny_peft
    judge = build_judge(JudgeConfig(mode="llm", max_new_tokens=6), model, tok, rt, base_id="tiny|none")
    assert judge.llm.model is model  # the same module: no second copy
    prompt = judge.llm.render("What is 7 plus 5?", "12", "13")
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def reply(ctx) -> str:
        with ctx:
            r = sample(model, inputs, 1, temperature=1.0, max_new_tokens=6, end_ids=judge.llm.end_ids,
                       pad_id=judge.llm.pad_id, blocked_ids=judge.llm.blocked_ids, greedy=True)
        return tok.batch_decode(r.completion_ids, skip_special_tokens=True)[0]

    import contextlib

    base_reply, adapted_reply = reply(adapters_off(model)), reply(contextlib.nullcontext())
    assert base_reply != adapted_reply  # the adapter changes the greedy reply...
    assert judge.llm.ask([("What is 7 plus 5?", "12", "13")])[0].reply == base_reply  # ...the judge is the base


def test_modes_route_pairs(tiny_peft, monkeypatch):
    model, tok, rt = tiny_peft
    spy = _CountGenerate(model, monkeypatch)
    items = [
        JudgeItem("What is 7 plus 5?", "The answer is 12.", "12"),  # rules: same
        JudgeItem("What is 7 plus 5?", "13", "12"),  # rules: different
        JudgeItem("What is 7 plus 5?", "twelve", "12"),  # rules cannot tell
        JudgeItem("What is 7 plus 5?", "Let me add 7 and 5 to get 1", "12", truncated=True),  # no final answer
        JudgeItem("What is 7 plus 5?", "", "12"),  # empty
    ]
    rules = Judge("rules")
    v, stats = rules.decide(items)
    assert [x.same for x in v] == [True, False, False, False, False] and stats["judge_by_llm"] == 0

    llm = build_judge(JudgeConfig(mode="llm"), model, tok, rt, base_id="tiny|none")
    v, stats = llm.decide(items)
    assert [x.by for x in v] == ["llm", "llm", "llm", "rules", "rules"]  # no final answer: 0 without asking
    assert spy.calls == [3]
    # The random tiny model never answers yes/no: unparseable replies are 0 and counted.
    assert stats["judge_unparseable"] == sum(x.unparseable for x in v) and all(
        x.same == (parse_verdict(x.reply) is True) for x in v if x.by == "llm")

    both = build_judge(JudgeConfig(mode="rules_then_llm"), model, tok, rt, base_id="tiny|none")
    v, stats = both.decide(items)
    assert [x.by for x in v] == ["rules", "rules", "llm", "rules", "rules"]
    assert v[0].same is True and stats == {"judge_by_rules": 4.0, "judge_by_llm": 1.0, "judge_cache_hits": 0.0,
                                           "judge_unparseable": float(v[2].unparseable)}
    assert spy.calls == [3, 1]


# --------------------------------------------------------------------------- judge-check


PAIRS = [
    {"question": "What is 7 plus 5?", "answer_a": "12", "answer_b": "The answer is 12.", "same": True},  # tp
    {"question": "Half of one?", "answer_a": "0.5", "answer_b": "1/2", "same": True},  # tp
    {"question": "Capital of Italy?", "answer_a": "B", "answer_b": "It is Rome.", "same": True,
     "choices": ["Paris", "Rome", "Oslo"]},  # tp
    {"question": "What is 7 plus 5?", "answer_a": "13", "answer_b": "12", "same": False},  # tn
    {"question": "What is 7 plus 5?", "answer_a": "twelve", "answer_b": "12", "same": True},  # fn: rules cannot tell
    {"question": "Capital?", "answer_a": "The answer is A", "answer_b": "The answer is B", "same": False,
     "choices": ["Paris", "Rome"]},  # tn
    {"question": "Fruit count?", "answer_a": "The answer is 12 apples", "answer_b": "12 oranges", "same": False},  # fp
    {"question": "City?", "answer_a": "Paris", "answer_b": "Paris, France", "same": False},  # tn (undecided)
]


def _write_pairs(path: Path) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def test_judge_check_rules_confusion_counts(tmp_path):
    from click.testing import CliRunner

    from cordlite.cli import main

    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    res = CliRunner().invoke(main, ["judge-check", str(pairs), "--mode", "rules", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "accuracy 75.0%  tp 3  fp 1  fn 1  tn 3  unparseable 0" in res.output
    r = json.loads((tmp_path / "out" / "judge_check.json").read_text())
    assert (r["n"], r["tp"], r["fp"], r["fn"], r["tn"]) == (8, 3, 1, 1, 3)
    assert r["precision"] == 0.75 and r["recall"] == 0.75 and r["decided_by_rules"] == 8
    verdicts = [json.loads(l) for l in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()]
    assert [v["agree"] for v in verdicts] == [True, True, True, True, False, True, False, True]
    assert "| labelled same | 3 | 1 |" in (tmp_path / "out" / "judge_check.md").read_text()


def test_judge_check_bad_file_names_the_line(tmp_path):
    from click.testing import CliRunner

    from cordlite.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"question": "q", "answer_a": "1"}) + "\n{oops\n")
    res = CliRunner().invoke(main, ["judge-check", str(bad), "--mode", "rules"])
    assert res.exit_code == 1
    assert "line 2: missing or wrong field(s) answer_b, same (true or false)" in res.output
    assert "line 3: not valid JSON" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["judge-check", str(_write_pairs(tmp_path / "p.jsonl")), "--mode", "llm"])
    assert res.exit_code == 1 and "--model: required" in res.output


def test_judge_check_llm_on_tiny_model_then_from_cache(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from cordlite.cli import main

    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    args = ["judge-check", str(pairs), "--mode", "rules_then_llm", "--model", str(tiny_model_dir), "--device", "cpu",
            "--max-new-tokens", "4", "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "out" / "judge_check.json").read_text())
    assert r["decided_by_llm"] == 2 and r["decided_by_rules"] == 6  # "twelve" and "Paris, France"
    assert r["generate_calls"] == 1 and r["cache_hits"] == 0
    assert r["tp"] + r["fp"] + r["fn"] + r["tn"] == 8 and 0 <= r["unparseable"] <= 2
    again = CliRunner().invoke(main, args)
    r2 = json.loads((tmp_path / "out" / "judge_check.json").read_text())
    assert again.exit_code == 0 and r2["generate_calls"] == 0 and r2["cache_hits"] == 2
    assert {k: r2[k] for k in ("tp", "fp", "fn", "tn")} == {k: r[k] for k in ("tp", "fp", "fn", "tn")}


def test_separate_judge_model_in_4bit(tiny_model_dir, tmp_path):
    """A separate judge: a plain causal LM (here a tiny random Qwen2 with the tiny tokenizer), NF4."""
    import bitsandbytes as bnb
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from cordlite.judge.rewards import load_judge_model
    from cordlite.models.runtime import resolve_runtime

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id))
    judge_dir = tmp_path / "judge-lm"
    lm.save_pretrained(judge_dir)
    tok.save_pretrained(judge_dir)
    rt = resolve_runtime(ModelConfig(device="cpu"), QuantizationConfig(mode="nf4"), TrainConfig())
    model, jt = load_judge_model(str(judge_dir), "nf4", rt)
    assert type(model).__name__ == "Qwen2ForCausalLM" and jt.padding_side == "left"
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14
    judge = build_judge(JudgeConfig(mode="llm", model=str(judge_dir), quantization="nf4", max_new_tokens=3), rt=rt)
    assert isinstance(judge.llm, LLMJudge) and judge.llm.model_id == f"{judge_dir}|nf4"
    verdicts, stats = judge.decide([JudgeItem("What is 7 plus 5?", "twelve", "12")])
    assert stats["judge_by_llm"] == 1 and verdicts[0].reply is not None


# --------------------------------------------------------------------------- training with the LLM judge


def test_train_step_with_llm_self_judge_loads_one_model(short_answer_model_dir, tiny_manifest, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from cordlite.train import trainer as trainer_module
    from cordlite.recipe import recipe_from_dict

    loads: list[str] = []
    real = PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    built = {}
    real_judge_for_recipe = trainer_module.judge_for_recipe

    def spy(recipe, model, *args, **kwargs):
        built["model"] = model
        built["judge"] = real_judge_for_recipe(recipe, model, *args, **kwargs)
        return built["judge"]

    monkeypatch.setattr(trainer_module, "judge_for_recipe", spy)
    raw = {
        "model": {"name_or_path": str(short_answer_model_dir), "device": "cpu"},
        "quantization": {"mode": "none"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train_manifest": str(tiny_manifest), "instruction": "Answer the question."},
        "rollout": {"max_new_tokens": 8, "group_size": 2},
        "loss": {"top_k": 3},
        "judge": {"mode": "llm", "model": "self", "max_new_tokens": 4},
        "train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2},
        "output": {"dir": str(tmp_path / "run"), "progress": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    trainer_module.train(recipe_from_dict(raw))
    assert loads == ["Qwen2AudioForConditionalGeneration"]  # the base, once: the judge is no second load
    judge = built["judge"]
    assert judge.mode == "llm" and judge.llm.model is built["model"]
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["judge_by_llm"] + row["judge_by_rules"] == 4  # 2 prompts x group_size 2
    assert row["judge_by_llm"] >= 1 and judge.llm.generate_calls == 1
    assert row["judge_unparseable"] <= row["judge_by_llm"]
    cached = (tmp_path / "run" / "judge_cache.jsonl").read_text().splitlines()
    assert 1 <= len(cached) <= row["judge_by_llm"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
