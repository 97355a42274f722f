"""Tests for cordlite.models.tiny_checkpoint: the offline tiny Qwen2-Audio checkpoint.

Run with: python -m pytest tests/test_tiny_model.py -q
The checkpoint is built once per session (well under a second after imports).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Tokenizer,
)

from cordlite.models.tiny import TinySpec
from cordlite.models.tiny_checkpoint import MARKER_FILE, build_tiny_qwen2audio, ensure_tiny_qwen2audio, read_marker
from cordlite.models.tiny_processor import QWEN2_AUDIO_CHAT_TEMPLATE, SPECIAL_TOKENS

SAMPLING_RATE = 16000
MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "audio", "audio": "x.wav"}, {"type": "text", "text": "Answer."}],
    }
]
EXPECTED_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nAnswer.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="session")
def processor(tiny_model_dir: Path) -> Qwen2AudioProcessor:
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def model(tiny_model_dir: Path) -> Qwen2AudioForConditionalGeneration:
    return Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir).eval()


def _sine(seconds: float = 2.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dir_snapshot(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_loads_like_a_real_checkpoint(tiny_model_dir: Path, processor: Qwen2AudioProcessor) -> None:
    loaded, info = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.dtype == torch.float32
    assert type(processor) is Qwen2AudioProcessor
    assert isinstance(processor.tokenizer, Qwen2Tokenizer)
    assert isinstance(AutoTokenizer.from_pretrained(tiny_model_dir), Qwen2Tokenizer)

    config = loaded.config
    tokenizer = processor.tokenizer
    assert config.text_config.vocab_size == len(tokenizer) == TinySpec().vocab_size
    assert config.audio_token_index == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert not config.text_config.tie_word_embeddings
    assert config.text_config.max_position_embeddings >= 2048
    assert processor.feature_extractor.nb_max_frames == 2 * config.audio_config.max_source_positions
    assert processor.feature_extractor.sampling_rate == SAMPLING_RATE

    gen = GenerationConfig.from_pretrained(tiny_model_dir)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    assert gen.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert gen.pad_token_id == ids["<|endoftext|>"] == tokenizer.pad_token_id
    assert gen.do_sample is False and gen.max_new_tokens == 64

    marker = read_marker(tiny_model_dir)
    assert marker is not None and marker["spec"]["seed"] == 0
    assert marker["special_token_ids"] == ids


def test_lm_linear_dims_fit_4bit_blocks(model: Qwen2AudioForConditionalGeneration) -> None:
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    checked = 0
    for name, module in model.model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in names:
            assert module.in_features % 64 == 0 and module.out_features % 64 == 0, name
            checked += 1
    assert checked == len(names) * model.config.text_config.num_hidden_layers


def test_spec_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        TinySpec(num_key_value_heads=2).validate()
    with pytest.raises(ValueError, match="num_attention_heads"):
        TinySpec(num_attention_heads=3).validate()


def test_chat_template_renders_like_qwen2_audio(processor: Qwen2AudioProcessor) -> None:
    assert processor.chat_template == QWEN2_AUDIO_CHAT_TEMPLATE
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == EXPECTED_PROMPT


@pytest.mark.parametrize(
    "text",
    [
        "What is 12 plus 7? The answer is 19.",
        "What is 100 divided by 4? A. 20 B. 25 C. 30 D. 40",
        "Héllo wörld, naïve café 日本語 😀  two  spaces\n\ttab ?",
        EXPECTED_PROMPT,
    ],
)
def test_tokenizer_round_trips(processor: Qwen2AudioProcessor, text: str) -> None:
    tokenizer = processor.tokenizer
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(processor: Qwen2AudioProcessor) -> None:
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS]
    # Appended after the BPE entries, like the real Qwen2 vocabulary.
    assert ids == list(range(len(tokenizer) - len(SPECIAL_TOKENS), len(tokenizer)))
    for token, token_id in zip(SPECIAL_TOKENS, ids):
        assert tokenizer(token)["input_ids"] == [token_id]
        assert tokenizer(f"a{token}b")["input_ids"].count(token_id) == 1
    assert set(SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)


def test_digits_tokenize_one_per_token(processor: Qwen2AudioProcessor) -> None:
    assert processor.tokenizer.tokenize("12345") == ["1", "2", "3", "4", "5"]


def test_same_spec_gives_identical_weights(
    tiny_model_dir: Path, model: Qwen2AudioForConditionalGeneration, tmp_path: Path
) -> None:
    again = build_tiny_qwen2audio(tmp_path / "again")
    first = model.state_dict()
    second = Qwen2AudioForConditionalGeneration.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == torch.float32, key
        assert torch.equal(first[key], second[key]), key
    # Byte-identical files too, so a rebuilt checkpoint never looks like a different one.
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tiny_model_dir / name).read_bytes() == (again / name).read_bytes(), name

    other_seed = build_tiny_qwen2audio(tmp_path / "seed1", TinySpec(seed=1))
    reseeded = load_file(other_seed / "model.safetensors")
    saved = load_file(tiny_model_dir / "model.safetensors")
    assert saved.keys() == reseeded.keys()
    assert any(not torch.equal(saved[key], reseeded[key]) for key in saved)


def test_forward_and_generate_on_processor_output(
    processor: Qwen2AudioProcessor, model: Qwen2AudioForConditionalGeneration
) -> None:
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=[prompt], audio=[_sine()], sampling_rate=SAMPLING_RATE, return_tensors="pt", padding=True
    )
    audio_id = model.config.audio_token_index
    # 2 s -> 200 mel frames -> 100 after the conv stride -> 50 after pooling.
    assert int((inputs["input_ids"] == audio_id).sum()) == 50

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()

    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[0] == 1
    assert inputs["input_ids"].shape[1] < generated.shape[1] <= inputs["input_ids"].shape[1] + 5


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash while saving")

    monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "save_pretrained", boom)
    out_dir = tmp_path / "tiny"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_tiny_qwen2audio(out_dir)
    assert not out_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = build_tiny_qwen2audio(tmp_path / "tiny")
    before = _dir_snapshot(out_dir)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash while saving")

    monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        build_tiny_qwen2audio(out_dir, TinySpec(seed=3), overwrite=True)
    assert _dir_snapshot(out_dir) == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_ensure_reuses_rebuilds_and_refuses(tmp_path: Path) -> None:
    out_dir = tmp_path / "tiny"
    assert ensure_tiny_qwen2audio(out_dir) == out_dir.resolve()
    before = _dir_snapshot(out_dir)
    assert ensure_tiny_qwen2audio(out_dir) == out_dir.resolve()
    assert _dir_snapshot(out_dir) == before  # complete and matching: not rebuilt

    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_tiny_qwen2audio(out_dir)

    ensure_tiny_qwen2audio(out_dir, TinySpec(seed=5))
    assert read_marker(out_dir)["spec"]["seed"] == 5

    # A directory without the marker is never accepted or replaced.
    (out_dir / MARKER_FILE).unlink()
    with pytest.raises(FileExistsError, match=MARKER_FILE):
        ensure_tiny_qwen2audio(out_dir)
    foreign = tmp_path / "real_checkpoint"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "qwen2_audio"}))
    with pytest.raises(FileExistsError, match="not a tiny checkpoint"):
        build_tiny_qwen2audio(foreign, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["config.json"]
