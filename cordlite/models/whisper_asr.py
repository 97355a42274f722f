"""Whisper as a transcriber: what a pretrained encoder hears, read back as text.

    asr = WhisperASR.packaged("whisper-tiny.en", cache_dir="cache/whisper")
    asr.transcribe([clip_16k, ...])          # -> [" Mia has seven shells. ...", ...]

Built from the packaged CTranslate2 weights (cordlite.models.whisper_weights) into transformers'
WhisperForConditionalGeneration, with the tokenizer.json shipped beside them. Decoding is greedy
with no timestamps, English (the `.en` models take no language or task token), at most
`max_new_tokens`. Used to measure voices (benchmarks/hearing.py) and as the hearing probe of a
pretrained encoder; it is not part of training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cordlite.models.whisper_weights import (
    PACKAGED,
    WeightsError,
    encoder_shape,
    layer_count,
    package_file,
    packaged_model_bin,
    read_ct2,
    whisper_state_dict,
)


class WhisperASR:
    def __init__(self, model, tokenizer, prompt_ids: list[int], end_id: int, num_mel_bins: int):
        from transformers import WhisperFeatureExtractor

        self.model, self.tokenizer = model.eval(), tokenizer
        self.prompt_ids, self.end_id = prompt_ids, end_id
        self.features = WhisperFeatureExtractor(feature_size=num_mel_bins)

    @classmethod
    def packaged(cls, name: str, cache_dir: str | Path) -> "WhisperASR":
        from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

        arrays = read_ct2(packaged_model_bin(name, cache_dir))
        pkg, inner = PACKAGED[name].parts[0]
        tok_path = package_file(pkg, inner, PACKAGED[name].pip).parent / "tokenizer.json"
        if not tok_path.is_file():
            raise WeightsError(f"{tok_path}: the tokenizer of the packaged {name} weights is missing; reinstall them")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_path))
        enc = encoder_shape(arrays)
        config = WhisperConfig(
            vocab_size=int(arrays["decoder/embeddings/weight"].shape[0]), d_model=enc.d_model,
            encoder_layers=enc.encoder_layers, decoder_layers=layer_count(arrays, "decoder"),
            encoder_attention_heads=enc.encoder_attention_heads,
            decoder_attention_heads=int(arrays["decoder/num_heads"]),
            encoder_ffn_dim=enc.encoder_ffn_dim,
            decoder_ffn_dim=int(arrays["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            num_mel_bins=enc.num_mel_bins, max_source_positions=enc.max_source_positions,
            max_target_positions=int(arrays["decoder/position_encodings/encodings"].shape[0]))
        model = WhisperForConditionalGeneration(config)
        model.load_state_dict(whisper_state_dict(arrays), strict=True)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>", "<|endoftext|>")}
        english_only = name.endswith(".en")
        prompt = [ids["<|startoftranscript|>"]] + ([] if english_only else [ids["<|en|>"], ids["<|transcribe|>"]])
        return cls(model, tokenizer, prompt + [ids["<|notimestamps|>"]], ids["<|endoftext|>"], config.num_mel_bins)

    @torch.no_grad()
    def transcribe(self, clips: list[np.ndarray], batch_size: int = 8, max_new_tokens: int = 96) -> list[str]:
        """Greedy transcripts of 16 kHz mono clips (each up to 30 s)."""
        texts: list[str] = []
        for start in range(0, len(clips), batch_size):
            batch = clips[start:start + batch_size]
            feats = self.features(batch, sampling_rate=16000, return_tensors="pt").input_features  # [b, mels, 3000]
            encoded = self.model.model.encoder(feats).last_hidden_state
            ids = torch.tensor([self.prompt_ids] * len(batch))
            done = torch.zeros(len(batch), dtype=torch.bool)
            cache, step_ids = None, ids
            for _ in range(max_new_tokens):
                out = self.model(encoder_outputs=(encoded,), decoder_input_ids=step_ids, cache=cache, use_cache=True)
                cache = out.cache  # the decoder's keys and values so far: each step feeds one new token
                nxt = out.logits[:, -1].argmax(-1).masked_fill(done, self.end_id)
                step_ids = nxt[:, None]
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                done |= nxt == self.end_id
                if bool(done.all()):
                    break
            for row in ids[:, len(self.prompt_ids):].tolist():
                row = row[: row.index(self.end_id)] if self.end_id in row else row
                texts.append(self.tokenizer.decode(row))
        return texts
