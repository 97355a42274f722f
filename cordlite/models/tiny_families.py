"""Tiny random-init checkpoints of every family cordlite runs, built offline in seconds.

    path = ensure_tiny("audioflamingo3", "cache/tiny-audioflamingo3")
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(path)   # like the real one
    processor = AutoProcessor.from_pretrained(path)

Each is the family's real transformers class at TinySpec's shape (a 64-wide language model, a
64-wide Whisper-style encoder on a 10 s window), with a byte-level BPE trained here that carries
the family's special tokens, the family's real processor class and chat template, and a
generation config that stops where the real checkpoint stops. Qwen2-Audio's is
cordlite.models.tiny_checkpoint's (the tiny model of the CPU recipes); the others share its
directory handling (atomic install, a marker written last, rebuilt when the spec changes).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from cordlite.files import ordinary_modes
from cordlite.models.tiny import TinySpec, qwen2_text_config
from cordlite.models.tiny_checkpoint import MARKER_FILE, _check_replaceable, _install, build_tiny_qwen2audio, \
    ensure_tiny_qwen2audio, read_marker
from cordlite.models.tiny_processor import corpus_digest, default_corpus, train_tokenizer, whisper_features

__all__ = ["TINY_FAMILIES", "build_tiny", "ensure_tiny"]

_FORMAT = 1

# Audio Flamingo 3's tokens (Qwen2.5's chat markers and its `<sound>` placeholder) and the chat
# template of nvidia/audio-flamingo-3-hf's processor: the audio item becomes one `<sound>` ahead
# of the turn's text.
AF3_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>")
def flamingo_chat_template(system_prompt: str) -> str:
    """The chat template of the Flamingo processors (transformers' conversion scripts for Audio
    Flamingo 3 and Music Flamingo): the audio item becomes one `<sound>` ahead of the turn's text;
    they differ in the default system prompt."""
    return (
        "{% if messages[0]['role'] != 'system' %}"
        "<|im_start|>system\n" + system_prompt + "<|im_end|>\n"
        "{% endif %}"
        "{% for m in messages if m['content'] is not none %}"
        "<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}"
        "{{ m['content'] }}"
        "{% else %}"
        "{% set audio = namespace(found=False) %}"
        "{% set text_buf = namespace(v='') %}"
        "{% for c in m['content'] %}"
        "{% if c.get('type') == 'audio' or 'audio' in c %}"
        "{% set audio.found = True %}"
        "{% elif c.get('type') == 'text' or 'text' in c %}"
        "{% set text_buf.v = text_buf.v + c['text'] %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}"
        "{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


AF3_CHAT_TEMPLATE = flamingo_chat_template("You are a helpful assistant.")
# Music Flamingo's default system prompt, verbatim (its typos included).
MUSICFLAMINGO_SYSTEM_PROMPT = (
    "You are Music Flamingo, a multimodal assistant for language and music. On each turn you receive an audio "
    "clip which contains music and optional text, you will receive at least one or both; use your world knowledge "
    "and reasoning to help the user with any task. Interpret the entirety of the content any input music"
    "--regardlenss of whether the user calls it audio, music, or sound."
)
MUSICFLAMINGO_CHAT_TEMPLATE = flamingo_chat_template(MUSICFLAMINGO_SYSTEM_PROMPT)
MUSICFLAMINGO_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>", "<|sound_bos|>", "<|sound_eos|>")


def _flamingo_encoder_config(spec: TinySpec):
    """Audio Flamingo 3's encoder (Whisper's, with average pooling) at the tiny shape."""
    from transformers import AudioFlamingo3EncoderConfig

    return AudioFlamingo3EncoderConfig(num_mel_bins=spec.num_mel_bins, encoder_layers=spec.audio_layers,
                                       encoder_attention_heads=spec.audio_heads, encoder_ffn_dim=spec.audio_ffn_dim,
                                       d_model=spec.audio_d_model, max_source_positions=spec.max_source_positions,
                                       scale_embedding=False)


def _qwen_generation_config(endoftext: int, im_end: int):
    """Where a Qwen-based chat checkpoint stops: end of turn or end of text, greedy by default."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext,
                            do_sample=False, max_new_tokens=64)


def _audioflamingo3(spec: TinySpec, lines: list[str]):
    """(model, processor, special token ids) of a tiny Audio Flamingo 3."""
    import torch
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
    )

    tokenizer = train_tokenizer(spec.vocab_size, lines, AF3_SPECIAL_TOKENS)
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in AF3_SPECIAL_TOKENS}
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    audio = _flamingo_encoder_config(spec)
    config = AudioFlamingo3Config(audio_config=audio, text_config=qwen2_text_config(spec, len(tokenizer), endoftext, im_end),
                                  audio_token_id=ids["<sound>"])
    config.dtype = "float32"
    torch.manual_seed(spec.seed)
    model = AudioFlamingo3ForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = _qwen_generation_config(endoftext, im_end)
    processor = AudioFlamingo3Processor(feature_extractor=whisper_features(spec.num_mel_bins, spec.chunk_length_s), tokenizer=tokenizer,
                                        chat_template=AF3_CHAT_TEMPLATE, max_audio_len=spec.chunk_length_s)
    return model, processor, ids


# Qwen2.5-Omni's tokens (the names its tokenizer_config.json gives them, which its processor reads)
# and the chat template of Qwen/Qwen2.5-Omni-3B's processor, verbatim.
OMNI_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                       "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>")
OMNI_NAMED_TOKENS = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
                     "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
                     "vision_eos_token": "<|vision_eos|>"}
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen2_5_omni(spec: TinySpec, lines: list[str]):
    """(model, processor, special token ids) of a tiny Qwen2.5-Omni Thinker. Its processor is the real
    Qwen2_5OmniProcessor without image and video processors (families.processors: built the same
    way where torchvision is missing); the saved preprocessor_config.json also carries Qwen2-VL's image
    processor settings, as the real checkpoint's does."""
    import torch
    from transformers import (
        Qwen2_5OmniAudioEncoderConfig,
        Qwen2_5OmniProcessor,
        Qwen2_5OmniTextConfig,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2_5OmniVisionEncoderConfig,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from cordlite.models.families.processors import audio_text_class

    tokenizer = train_tokenizer(spec.vocab_size, lines, OMNI_SPECIAL_TOKENS, OMNI_NAMED_TOKENS)
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in OMNI_SPECIAL_TOKENS}
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    head_dim = spec.hidden_size // spec.num_attention_heads
    half = head_dim // 2  # the 3-D rotary sections cover half the head dimension, as (16, 24, 24) of 64 in the 7B
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = Qwen2_5OmniTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=8192, rms_norm_eps=1e-5,
        tie_word_embeddings=False, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
        bos_token_id=endoftext, eos_token_id=im_end, pad_token_id=endoftext)
    audio = Qwen2_5OmniAudioEncoderConfig(
        num_mel_bins=spec.num_mel_bins, encoder_layers=spec.audio_layers, encoder_attention_heads=spec.audio_heads,
        encoder_ffn_dim=spec.audio_ffn_dim, d_model=spec.audio_d_model, max_source_positions=spec.max_source_positions,
        n_window=100, output_dim=spec.hidden_size)
    # The vision encoder is part of the class; an audio question never runs it. Smallest legal shape.
    vision = Qwen2_5OmniVisionEncoderConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                                            out_hidden_size=spec.hidden_size, fullatt_block_indexes=[0])
    config = Qwen2_5OmniThinkerConfig(
        audio_config=audio, vision_config=vision, text_config=text, audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=tokenizer.encode("user", add_special_tokens=False)[0])
    config.dtype = "float32"
    torch.manual_seed(spec.seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = _qwen_generation_config(endoftext, im_end)
    cls = audio_text_class(Qwen2_5OmniProcessor)
    processor = cls(image_processor=None, video_processor=None,
                    feature_extractor=whisper_features(spec.num_mel_bins, spec.chunk_length_s),
                    tokenizer=tokenizer, chat_template=OMNI_CHAT_TEMPLATE)
    image = Qwen2VLImageProcessorPil().to_dict()
    image["image_processor_type"] = "Qwen2VLImageProcessor"
    processor.source_files = {"preprocessor_config.json": json.dumps(image)}
    return model, processor, ids


def _musicflamingo(spec: TinySpec, lines: list[str]):
    """(model, processor, special token ids) of a tiny Music Flamingo: Audio Flamingo 3's tiny shape
    with the rotary time embedding (rope theta 1200, a fifth of the encoder width rotated)."""
    import torch
    from transformers import (
        MusicFlamingoConfig,
        MusicFlamingoForConditionalGeneration,
        MusicFlamingoProcessor,
    )

    tokenizer = train_tokenizer(spec.vocab_size, lines, MUSICFLAMINGO_SPECIAL_TOKENS)
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in MUSICFLAMINGO_SPECIAL_TOKENS}
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    audio = _flamingo_encoder_config(spec)
    config = MusicFlamingoConfig(audio_config=audio, text_config=qwen2_text_config(spec, len(tokenizer), endoftext, im_end),
                                 audio_token_id=ids["<sound>"], audio_bos_token_id=ids["<|sound_bos|>"],
                                 audio_eos_token_id=ids["<|sound_eos|>"],
                                 rope_parameters={"rope_type": "default", "rope_theta": 1200})
    config.dtype = "float32"
    torch.manual_seed(spec.seed)
    model = MusicFlamingoForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = _qwen_generation_config(endoftext, im_end)
    processor = MusicFlamingoProcessor(feature_extractor=whisper_features(spec.num_mel_bins, spec.chunk_length_s),
                                       tokenizer=tokenizer, chat_template=MUSICFLAMINGO_CHAT_TEMPLATE,
                                       max_audio_len=spec.chunk_length_s)
    return model, processor, ids


# Gemma 4's vocabulary starts with these (pad 0, eos 1, bos 2, unk 3, mask 4), then its turn and media
# markers; the names are those of its tokenizer_config.json, which Gemma4Processor reads.
GEMMA4_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|audio>", "<|audio|>",
                         "<audio|>", "<|image>", "<|image|>", "<image|>", "<|video|>")
GEMMA4_NAMED_TOKENS = {"audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
                       "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>"}
# The turn format of Gemma 4's chat template for system, user and model turns of text and audio:
# BOS, `<|turn>ROLE\n` ... `<turn|>\n` (the assistant's role is `model`), an audio item as `<|audio|>`,
# the generation prompt `<|turn>model\n`. The real template's tool, thinking and image branches are left out.
GEMMA4_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<|turn>' + role + '\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] | trim -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}"
    "{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<turn|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\n' -}}{%- endif -%}"
)


def _gemma4(spec: TinySpec, lines: list[str]):
    """(model, processor, special token ids) of a tiny Gemma 4 with audio, as E2B is built: per-layer
    embeddings, the last half of the layers sharing keys and values, sliding and full attention,
    soft-capped logits, tied embeddings, a 2-layer conformer audio tower."""
    import torch
    from transformers import (
        Gemma4AudioConfig,
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4Processor,
        Gemma4TextConfig,
        Gemma4VisionConfig,
        GenerationConfig,
    )

    from cordlite.models.families.processors import audio_text_class
    from cordlite.models.tiny_processor import train_gemma_tokenizer

    tokenizer = train_gemma_tokenizer(spec.vocab_size, lines, GEMMA4_SPECIAL_TOKENS, GEMMA4_NAMED_TOKENS)
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in GEMMA4_SPECIAL_TOKENS}
    head_dim = spec.hidden_size // spec.num_attention_heads
    text = Gemma4TextConfig(
        vocab_size=len(tokenizer), vocab_size_per_layer_input=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=4, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=head_dim, global_head_dim=2 * head_dim,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=32, num_kv_shared_layers=2, hidden_size_per_layer_input=8, final_logit_softcapping=30.0,
        max_position_embeddings=8192, pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"],
        tie_word_embeddings=True)
    # The subsampler's projection reads (channels[0] / 4) x channels[1] features: channels[0] = mel bins, as in E2B.
    audio = Gemma4AudioConfig(hidden_size=spec.audio_d_model, num_hidden_layers=spec.audio_layers,
                              num_attention_heads=spec.audio_heads, subsampling_conv_channels=(spec.num_mel_bins, 8),
                              output_proj_dims=spec.audio_d_model)
    # The vision tower is part of the class; an audio question never runs it. Smallest legal shape.
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16)
    config = Gemma4Config(text_config=text, audio_config=audio, vision_config=vision, audio_token_id=ids["<|audio|>"],
                          boa_token_id=ids["<|audio>"], eoa_token_index=ids["<audio|>"], image_token_id=ids["<|image|>"],
                          boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"], video_token_id=ids["<|video|>"])
    config.dtype = "float32"
    torch.manual_seed(spec.seed)
    model = Gemma4ForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids["<bos>"], eos_token_id=[ids["<turn|>"], ids["<eos>"]],
                                               pad_token_id=ids["<pad>"], do_sample=False, max_new_tokens=64)
    processor = audio_text_class(Gemma4Processor)(
        feature_extractor=Gemma4AudioFeatureExtractor(feature_size=spec.num_mel_bins), image_processor=None,
        tokenizer=tokenizer, video_processor=None, chat_template=GEMMA4_CHAT_TEMPLATE,
        audio_seq_length=spec.chunk_length_s * 25)
    processor.source_files = {"processor_config.json": json.dumps({"audio_seq_length": spec.chunk_length_s * 25,
                                                                   "audio_ms_per_token": 40, "image_seq_length": 280})}
    return model, processor, ids


_BUILDERS = {"qwen2_5_omni": _qwen2_5_omni, "gemma4": _gemma4, "audioflamingo3": _audioflamingo3,
             "musicflamingo": _musicflamingo}
TINY_FAMILIES = ("qwen2_audio",) + tuple(_BUILDERS)
"""Families with a tiny checkpoint (the parametrised end-to-end tests run each)."""


def _matches(marker: dict | None, family: str, spec: TinySpec, digest: str) -> bool:
    return (marker is not None and marker.get("format") == _FORMAT and marker.get("family") == family
            and marker.get("spec") == dataclasses.asdict(spec) and marker.get("corpus_sha256") == digest)


def build_tiny(family: str, out_dir: str | Path, spec: TinySpec = TinySpec(), overwrite: bool = False) -> Path:
    """Build the tiny checkpoint of `family` into `out_dir` (atomically, marker written last)."""
    if family == "qwen2_audio":
        return build_tiny_qwen2audio(out_dir, spec, overwrite=overwrite)
    if family not in _BUILDERS:
        raise ValueError(f"family {family!r}: no tiny checkpoint; families with one: {', '.join(TINY_FAMILIES)}")
    spec.validate()
    out_dir = Path(out_dir).expanduser().resolve()
    _check_replaceable(out_dir, overwrite)
    lines = default_corpus()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model, processor, ids = _BUILDERS[family](spec, lines)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        marker = {"format": _FORMAT, "family": family, "spec": dataclasses.asdict(spec),
                  "corpus_sha256": corpus_digest(lines), "vocab_size": len(processor.tokenizer),
                  "special_token_ids": ids}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        ordinary_modes(tmp)
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_tiny(family: str, out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """`out_dir` holding the tiny checkpoint of `family` for `spec`, built when missing or stale."""
    if family == "qwen2_audio":
        return ensure_tiny_qwen2audio(out_dir, spec)
    out_dir = Path(out_dir).expanduser().resolve()
    marker = read_marker(out_dir)
    if _matches(marker, family, spec, corpus_digest(default_corpus())):
        return out_dir
    return build_tiny(family, out_dir, spec, overwrite=marker is not None)
