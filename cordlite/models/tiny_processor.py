"""The tiny checkpoint's text and audio front end: tokenizer, processor, chat template.

    tokenizer = train_tokenizer(vocab_size, corpus)      # byte-level BPE as transformers' Qwen2Tokenizer
    processor = build_processor(tokenizer, num_mel_bins=128, chunk_length_s=10, max_source_positions=500)

Everything a Qwen2-Audio checkpoint ships besides its weights, made offline: a byte-level BPE
trained on a small built-in English/arithmetic corpus (or the caller's), the Whisper feature
extractor configured in code, and the real checkpoint's chat template, verbatim. The weights and
the checkpoint directory are cordlite.models.tiny's and cordlite.models.tiny_checkpoint's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

__all__ = ["QWEN2_AUDIO_CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_processor", "corpus_digest", "default_corpus",
           "special_ids", "train_gemma_tokenizer", "train_tokenizer", "whisper_features"]

# Qwen2-Audio's special tokens, in the order the real vocabulary appends them
# after its BPE entries (151643..151648 there; directly after the BPE entries here).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)

# The chat template shipped with Qwen/Qwen2-Audio-7B-Instruct, verbatim, so
# prompts rendered against the tiny checkpoint match the real model's prompts.
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


SAMPLING_RATE = 16000
HOP_LENGTH = 160
N_FFT = 400


_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred thousand million half third quarter double twice"
).split()

_MATH_WORDS = (
    "plus minus times divided multiplied added subtracted sum difference product quotient remainder "
    "equals equal total result answer question number numbers value calculate compute solve "
    "option options choose correct incorrect following choice add subtract multiply divide "
    "greater less larger smaller more fewer than even odd count counting left right many much "
    "digit digits first second last next previous step steps problem problems math arithmetic"
).split()

_COMMON_WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or which all have has "
    "had not but what when who how why where there their they them then these those some any each "
    "other such only also into over after before under about between through during without within "
    "because while if so no yes do does did can could will would should may might must people time "
    "year years day days week month way thing things man woman child children world life hand part "
    "place case point group company system program government school student teacher family home "
    "water room mother father money story fact book word words name side house night morning evening "
    "food music sound voice speech audio recording speaker listen hear heard said say says speak "
    "spoken tell told ask asked give gave make made take took see saw look find found know knew "
    "think thought want need use used work worked call called try tried feel felt become leave put "
    "mean keep let begin seem help show play run move live believe bring happen write sit stand lose "
    "pay meet include continue set learn change lead understand watch follow stop create read spend "
    "grow open walk win offer remember love consider appear buy wait serve die send expect build stay "
    "fall cut reach kill remain suggest raise pass sell require report decide pull good new old great "
    "high small large long little big young important different early possible public bad able best "
    "better sure free true whole clear full real hard easy simple short quick slow happy sad loud "
    "quiet fast strong weak hot cold warm dark light red blue green white black brown yellow please "
    "thank thanks hello welcome sorry okay today tomorrow yesterday always never sometimes often "
    "again still already here now very just well only even back also really almost once together "
    "helpful assistant system user reply respond response explain describe summarize transcribe "
    "language english sentence letter letters text message content carefully exactly briefly"
).split()

_CHOICE_LETTERS = ("A", "B", "C", "D")


def default_corpus() -> list[str]:
    """Return the built-in training corpus: a few hundred deterministic English lines.

    It covers what the tiny model will be asked in tests (spoken arithmetic,
    multiple choice, chat-template scaffolding) so those strings tokenize into
    plausible, reasonably short pieces.
    """
    lines: list[str] = [
        "system",
        "user",
        "assistant",
        "You are a helpful assistant.",
        "system\nYou are a helpful assistant.\nuser\nAudio 1: What is said in the recording?\nassistant\n",
        "Audio 1: Audio 2: Audio 3:",
        "Answer with the letter of the correct option.",
        "Answer with a single number.",
        "Listen to the audio and answer the question.",
    ]
    ops = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b))
    # Deterministic arithmetic in digits and in words; digits tokenize one per
    # token (Qwen2's pre-tokenizer isolates each digit), so these mostly teach
    # the surrounding phrasing.
    for a in range(0, 21):
        for step, (op_name, op) in enumerate(ops):
            b = (a * 7 + step * 3) % 13
            lines.append(f"What is {a} {op_name} {b}? The answer is {op(a, b)}.")
            words_q = f"what is {_NUMBER_WORDS[a]} {op_name} {_NUMBER_WORDS[b]}"
            lines.append(f"{words_q.capitalize()}? The answer is {op(a, b)}.")
        if a:
            product = a * ((a % 9) + 1)
            lines.append(f"What is {product} divided by {a}? The answer is {product // a}.")
            lines.append(f"{_NUMBER_WORDS[a].capitalize()} divided by {_NUMBER_WORDS[a]} equals one.")
    for i in range(60):
        a, b = (i * 17) % 50, (i * 29) % 40 + 1
        correct = a + b
        options = [correct, correct + 1, correct - 2, correct + 10]
        rotate = i % 4
        options = options[rotate:] + options[:rotate]
        letter = _CHOICE_LETTERS[options.index(correct)]
        choices = " ".join(f"{c}. {v}" for c, v in zip(_CHOICE_LETTERS, options))
        lines.append(f"Question: What is {a} plus {b}? {choices} Answer: {letter}.")
        lines.append(f"The correct option is {letter}. The answer is {letter}.")
    vocabulary = _COMMON_WORDS + _MATH_WORDS + _NUMBER_WORDS
    # Sliding windows over the word lists give every word a few contexts, both
    # mid-sentence (with a leading space) and capitalized at sentence start.
    for width, stride in ((6, 2), (9, 5)):
        for start in range(0, len(vocabulary), stride):
            chunk = vocabulary[start : start + width]
            if chunk:
                lines.append(" ".join(chunk).capitalize() + ".")
    lines.extend(word.capitalize() for word in vocabulary)
    lines.extend(word.upper() for word in _MATH_WORDS[:12])
    return lines


def corpus_digest(lines: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def train_tokenizer(vocab_size: int, corpus: Sequence[str], special_tokens: Sequence[str] = SPECIAL_TOKENS,
                    named_tokens: dict[str, str] | None = None):
    """Train a byte-level BPE and wrap it as transformers' Qwen2Tokenizer, with `special_tokens`
    (the first is end-of-text, eos and pad) appended after the BPE entries; `named_tokens` gives
    some of them the attribute names a checkpoint's tokenizer_config.json gives them
    (audio_token="<|AUDIO|>": tokenizer.audio_token, tokenizer.audio_token_id)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Qwen2Tokenizer (transformers 5) rebuilds its normalizer and pre-tokenizer
    # in __init__ and only keeps vocab/merges from tokenizer.json, so training
    # must use exactly the same pipeline or the merges would not apply on load.
    trainer_backend = Tokenizer(models.BPE())
    trainer_backend.normalizer = normalizers.NFC()
    trainer_backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer_backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        min_frequency=0,
        show_progress=False,
        special_tokens=[],
        # Seed all 256 byte symbols so any text (any language, any byte) encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    trainer_backend.train_from_iterator(corpus, trainer=trainer)

    model_json = json.loads(trainer_backend.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]

    # Mirrors Qwen2-Audio-7B-Instruct's tokenizer_config: <|endoftext|> is both
    # eos and pad there, there is no unk/bos, and the chat/audio markers are
    # extra special tokens. Added after the BPE entries, so their ids follow it.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=special_tokens[0],
        pad_token=special_tokens[0],
        extra_special_tokens=list(special_tokens[1:]),
        model_max_length=32768,
    )
    ids = [tokenizer.convert_tokens_to_ids(tok) for tok in special_tokens]
    expected = list(range(len(vocab), len(vocab) + len(special_tokens)))
    if ids != expected:
        raise RuntimeError(f"special token ids {ids} are not the expected {expected} after the BPE vocabulary")
    if named_tokens:  # named after the ids are fixed (naming at construction would add them first)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            tokenizer = Qwen2Tokenizer.from_pretrained(tmp, **named_tokens)
        if [tokenizer.convert_tokens_to_ids(tok) for tok in special_tokens] != expected:
            raise RuntimeError("naming the special tokens moved their ids")
    return tokenizer


def whisper_features(num_mel_bins: int, chunk_length_s: int):
    """The Whisper feature extractor of the tiny checkpoints (16 kHz, hop 160, a chunk_length_s window)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=chunk_length_s,
        n_fft=N_FFT,
        padding_value=0.0,
        return_attention_mask=True,
    )


def build_processor(tokenizer, *, num_mel_bins: int, chunk_length_s: int, max_source_positions: int):
    """Qwen2AudioProcessor (Whisper features) for an encoder of `max_source_positions`; the
    numbers come from the caller's spec (cordlite.models.tiny.TinySpec), which this module never
    imports."""
    from transformers import Qwen2AudioProcessor

    feature_extractor = whisper_features(num_mel_bins, chunk_length_s)
    # The encoder rejects any mel length other than 2 * max_source_positions,
    # and the processor always pads to nb_max_frames, so the two must agree.
    if feature_extractor.nb_max_frames != 2 * max_source_positions:
        raise ValueError(
            f"feature extractor yields {feature_extractor.nb_max_frames} frames but the encoder expects "
            f"{2 * max_source_positions}; chunk_length_s={chunk_length_s} is inconsistent"
        )
    return Qwen2AudioProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE,
    )


def special_ids(tokenizer) -> dict[str, int]:
    return {tok: int(tokenizer.convert_tokens_to_ids(tok)) for tok in SPECIAL_TOKENS}


def train_gemma_tokenizer(vocab_size: int, corpus: Sequence[str], special_tokens: Sequence[str],
                          named_tokens: dict[str, str] | None = None):
    """A BPE in the form of Gemma's tokenizers (transformers' GemmaTokenizer: spaces as "▁", byte
    fallback to <0x00>..<0xFF>): `special_tokens` first (pad, eos, bos, unk, mask, then the chat
    and media markers), the 256 byte tokens, then the merges trained on `corpus`."""
    import tempfile

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    # The pipeline GemmaTokenizer rebuilds in __init__ (it keeps only the vocabulary and the merges).
    backend = Tokenizer(models.BPE(unk_token=special_tokens[3], byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(special_tokens) - len(byte_tokens), min_frequency=0,
                                  show_progress=False, special_tokens=[])
    backend.train_from_iterator(corpus, trainer=trainer)
    model_json = json.loads(backend.to_str())["model"]
    vocab = {tok: i for i, tok in enumerate(list(special_tokens) + byte_tokens)}
    for tok, _ in sorted(model_json["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]
    pad, eos, bos, unk, mask = special_tokens[:5]
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, pad_token=pad, eos_token=eos, bos_token=bos,
                               unk_token=unk, mask_token=mask, extra_special_tokens=list(special_tokens[5:]))
    with tempfile.TemporaryDirectory() as tmp:  # named once the ids are fixed (as train_tokenizer does)
        tokenizer.save_pretrained(tmp)
        tokenizer = GemmaTokenizer.from_pretrained(tmp, **(named_tokens or {}))
    if [tokenizer.convert_tokens_to_ids(t) for t in special_tokens] != list(range(len(special_tokens))):
        raise RuntimeError("special token ids moved")
    return tokenizer
