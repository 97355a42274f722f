"""Shared, session-scoped fixtures: one tiny model and one tiny spoken set per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cordlite.models.tiny_checkpoint import build_tiny_qwen2audio

    return build_tiny_qwen2audio(tmp_path_factory.mktemp("tiny") / "qwen2audio")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_tools.tiny_spoken import make_tiny_spoken_set

    return make_tiny_spoken_set(tmp_path_factory.mktemp("spoken") / "tiny", n_questions=8, seed=0)


@pytest.fixture(scope="session")
def short_answer_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with every second word token (ASCII letters, 2+ characters) also ending the
    turn (generation_config eos ids): its random answers stop after a few tokens on a word instead
    of running to the budget, so they have a final answer the judge reads. Weights unchanged."""
    import json
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("short") / "qwen2audio"
    shutil.copytree(tiny_model_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    first_special = tok.convert_tokens_to_ids("<|endoftext|>")
    words = [i for i in range(first_special) if tok.decode([i]).strip().isalpha() and len(tok.decode([i]).strip()) >= 2]
    gen_path = out / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    gen["eos_token_id"] = eos + words[::2]
    gen_path.write_text(json.dumps(gen, indent=2))
    return out


@pytest.fixture(scope="session", autouse=True)
def _digest_cache(tmp_path_factory: pytest.TempPathFactory):
    """File digests (cordlite.train.identity) cached in the session's folder, not the user's home."""
    import os

    old = os.environ.get("CORDLITE_CACHE")
    os.environ["CORDLITE_CACHE"] = str(tmp_path_factory.mktemp("cordlite_cache"))
    yield
    if old is None:
        os.environ.pop("CORDLITE_CACHE", None)
    else:
        os.environ["CORDLITE_CACHE"] = old


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Library calls such as the testbed build set torch's thread count for their process; give
    the next test the count it would have had (float reduction order depends on it)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def plain_base():
    """plain_base(model_dir, quant="none"): the checkpoint loaded by plain transformers (see _plain_base)."""
    return _plain_base


def _plain_base(model_dir: Path, quant: str = "none"):
    """A checkpoint loaded by plain transformers (its family's class), without cordlite's loader or
    peft, unquantised or NF4 on CPU: what the teacher (adapters off) must equal."""
    import torch
    from transformers import BitsAndBytesConfig

    from cordlite.models.families import detect_family
    from cordlite.models.load import _cpu_4bit_trainable

    family = detect_family(str(model_dir))
    if quant == "none":
        return family.transformers_class().from_pretrained(model_dir).eval()
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=list(family.skip_modules()))
    m = family.transformers_class().from_pretrained(model_dir, quantization_config=bnb, device_map={"": "cpu"})
    _cpu_4bit_trainable(m)
    return m.eval()


@pytest.fixture(scope="session")
def lora_student():
    """lora_student(recipe, b_scale=0.05) -> (model, processor, rt): see _lora_student."""
    return _lora_student


def _lora_student(recipe, b_scale: float = 0.05):
    """The recipe's base loaded by cordlite (torch seed 0) with its LoRA attached (seed 0), lora_B drawn
    from N(0, b_scale^2) (generator seed 1): a trained-looking adapter, so the student (adapters on)
    and the teacher (off) differ and every LoRA tensor gets a gradient. b_scale 0 keeps the fresh
    adapter (B = 0)."""
    import torch

    from cordlite.models.load import load_base
    from cordlite.models.lora import attach_lora
    from cordlite.models.runtime import resolve_runtime

    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    torch.manual_seed(0)
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt, seed=0)
    if b_scale:
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data = torch.randn(p.shape, generator=g) * b_scale
    return model, processor, rt


@pytest.fixture(scope="session")
def text_view_logprobs():
    """text_view_logprobs(model, views, ids, mask, teacher) -> [n, L, V]: see _text_view_logprobs."""
    return _text_view_logprobs


def _text_view_logprobs(model, views, ids, mask, teacher: bool):
    """Full-vocabulary log-probs of completions `ids` [n, L] after the text-view prompts (row i after
    prompt i mod B), with the adapters off when `teacher`."""
    import torch

    from cordlite.models.lora import adapters_off
    from cordlite.models.sampling import repeat_rows
    from cordlite.objective.logprobs import completion_hidden, full_logprobs

    prompt = repeat_rows(views.text, torch.arange(ids.shape[0]) % views.text["input_ids"].shape[0])
    with torch.no_grad():
        if teacher:
            with adapters_off(model):
                return full_logprobs(model, completion_hidden(model, prompt, ids, mask), 4)
        return full_logprobs(model, completion_hidden(model, prompt, ids, mask), 4)


def tiny_raw(model_dir: Path, manifest: Path, out: Path, steps: int = 2, **sections) -> dict:
    """The tiny CPU recipe as a mapping: `steps` steps of one prompt, a checkpoint every step.
    `sections` replace fields per section, e.g. optim={"lr": 1e-3}."""
    raw = {"model": {"name_or_path": str(model_dir), "device": "cpu"}, "quantization": {"mode": "none"},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "data": {"train_manifest": str(manifest), "instruction": "Answer the question."},
           "rollout": {"max_new_tokens": 4, "group_size": 2}, "loss": {"top_k": 3}, "optim": {"lr": 1e-2},
           "train": {"max_steps": steps, "batch_size": 1, "micro_batch_size": 1, "seed": 0},
           "output": {"dir": str(out), "progress": False, "save_every": 1, "keep_last": 3}}
    for section, fields in sections.items():
        raw[section] = {**raw.get(section, {}), **fields}
    return raw


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir: Path, tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """(raw recipe, run folder) of a finished 2-step tiny run with checkpoints of steps 1 and 2 and
    its adapter; copy it before changing anything."""
    from cordlite.recipe import recipe_from_dict
    from cordlite.train.trainer import train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    raw = tiny_raw(tiny_model_dir, tiny_manifest, out)
    train(recipe_from_dict(raw))
    return raw, out


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def one_error_line(output: str) -> str:
    """The one `error:` line of a command's output (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    return output[output.index("error: "):]
