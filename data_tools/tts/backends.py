"""The espeak-ng backend, and `make_backend`: the engine a TTS config names, started and checked.

    backend = make_backend(TTSConfig())          # espeak-ng
    backend = make_backend(TTSConfig(backend="kokoro", model="models/kokoro-82m"))
"""

from __future__ import annotations

import os

import numpy as np

from data_tools.tts.base import SMALL_MACHINE_CORES, Backend, BackendError, TTSConfig, VoiceChoice, espeak_rate


class EspeakBackend(Backend):
    name = "espeak"
    licence = ("espeak-ng: GPL-3.0-or-later, run as a separate program (apt espeak-ng) or loaded "
               "as a shared library (espeakng-loader wheel)")

    def __init__(self, engine: str = "auto") -> None:
        from data_tools.tts.espeak import EspeakTTS, list_voices

        # "auto": measured on 2 cores (benchmarks/data_tts.py), the in-process library costs
        # about 24 ms of CPU per question against 38 ms for a process per question, but it
        # synthesises one row at a time; so the library on small machines, the program on
        # machines with more than 4 cores. Whichever is missing, the other one.
        order = [engine] if engine != "auto" else (
            ["library", "binary"] if (os.cpu_count() or 1) <= SMALL_MACHINE_CORES else ["binary", "library"])
        errors = []
        for candidate in order:
            try:
                self._tts = EspeakTTS(candidate)
                break
            except (RuntimeError, ValueError) as e:
                errors.append(str(e))
        else:
            raise BackendError("; ".join(errors))
        self._voices = tuple(list_voices())
        # The binary runs one short process per row: while one thread waits for it (or for the
        # file's fsync) another can use the core. The library serialises synthesis under its
        # own lock, so extra threads would only queue.
        self.threads_per_core = 2 if self._tts.backend == "binary" else 1
        self.description = f"espeak-ng ({self._tts.backend})"

    def default_voices(self) -> tuple[str, ...]:
        return self._voices

    def check_voices(self, names: tuple[str, ...]) -> None:
        # espeak knows many more voices than the English list; try each once.
        from data_tools.tts.espeak import Voice

        for n in names:
            try:
                self._tts.synthesize("test", Voice(n))
            except (RuntimeError, ValueError) as e:
                raise BackendError(f"tts.voices: {n!r} does not work with {self.description}: {e}") from e

    def synthesize(self, text: str, voice: VoiceChoice) -> np.ndarray:
        from data_tools.tts.espeak import Voice

        pitch = 50 if voice.pitch is None else voice.pitch
        return self._tts.synthesize_16k(text, Voice(voice.name, espeak_rate(voice.speed), pitch))


def make_backend(cfg: TTSConfig) -> Backend:
    """Start the engine `cfg.backend` names; BackendError says what is missing and how to fix it."""
    if cfg.backend == "espeak":
        backend: Backend = EspeakBackend(cfg.espeak_engine)
    elif cfg.backend == "flite":
        from data_tools.tts.flite import FliteBackend

        backend = FliteBackend()
    elif cfg.backend == "kokoro":
        from data_tools.tts.neural import KokoroBackend

        backend = KokoroBackend(cfg.model, cfg.device)
    elif cfg.backend == "transformers":
        from data_tools.tts.neural import VitsBackend

        backend = VitsBackend(cfg.model, cfg.device)
    else:
        raise BackendError(f"tts.backend={cfg.backend!r}; use espeak, flite, kokoro or transformers")
    if cfg.voices:
        backend.check_voices(tuple(cfg.voices))
    return backend
