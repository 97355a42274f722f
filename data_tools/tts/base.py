"""The TTS interface every backend implements, and the seeded rule that gives each row its voice.

Every backend turns (text, VoiceChoice) into cordlite input audio: 16 kHz mono float32,
loudness-normalised (cordlite.audio). Backends:

* ``espeak``: espeak-ng (data_tools.tts.espeak), the apt binary when on PATH, else the library
  from the espeakng-loader wheel. Voices x rate x pitch. GPL-3.0-or-later, run as a separate
  program or loaded as a shared library.
* ``flite``: CMU flite 2.2 (data_tools.tts.flite, apt flite), natural voices compiled into the
  program, a process per row. BSD-style licence.
* ``kokoro``: Kokoro-82M (the paper's TTS) through the ``kokoro`` package, from a local
  folder with config.json, the .pth weights and voices/*.pt. Apache-2.0.
* ``transformers``: a local VITS checkpoint (VitsModel, e.g. a download of
  facebook/mms-tts-eng). Licence per model card (MMS-TTS: CC-BY-NC-4.0).

The engines live beside this module (espeak, neural) and `make_backend` starts the one a config
names (data_tools.tts.backends). Voice choice is a pure function of (seed, row id), so a resumed
job gives each row the voice it would have had, whatever the order the workers finish in.

    backend = make_backend(TTSConfig())          # espeak-ng (data_tools.tts.backends)
    voice = VoicePlan.for_backend(backend, TTSConfig(), seed=0).pick("q1")
    audio = backend.synthesize("What is seven plus five?", voice)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cordlite.audio import SAMPLE_RATE, loudness_normalize, resample

BackendName = Literal["espeak", "flite", "kokoro", "transformers"]
ESPEAK_BASE_WPM = 175  # speed 1.0; espeak's own default
SMALL_MACHINE_CORES = 4  # up to this many cores, espeak_engine "auto" prefers the library


class BackendError(RuntimeError):
    """A backend cannot start (not installed, weights missing, wrong model); the job stops."""


@dataclass(frozen=True)
class TTSConfig:
    """Which engine speaks, and the spread of voices it uses."""

    backend: BackendName = "espeak"
    """espeak (default, CPU, no weights), flite (CPU, natural voices, apt flite), kokoro (local
    Kokoro-82M) or transformers (local VITS)."""
    model: str = ""
    """kokoro: folder with config.json, kokoro-v1_0.pth, voices/*.pt; transformers: a VITS folder."""
    espeak_engine: Literal["auto", "binary", "library"] = "auto"
    """espeak only: the in-process library (less CPU per row, one row at a time) or the espeak-ng
    program (a process per row, scales with cores); auto = library up to 4 cores, else the program."""
    voices: tuple[str, ...] = ()
    """Voice names to draw from; () = the backend's English set (espeak: 8, flite: slt, rms, awb,
    kal16, kokoro: voices/a*, b*)."""
    speed: tuple[float, float] = (0.9, 1.1)
    """Range of speaking-rate factors; 1.0 = the engine's normal rate (espeak: 175 words/minute)."""
    pitch: tuple[int, int] = (35, 65)
    """espeak only: range of base pitch, 0..99 (50 = normal)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """kokoro / transformers: where the model runs."""


@dataclass(frozen=True)
class VoiceChoice:
    """The voice of one row: name, speed factor, espeak pitch, and the seed of any sampling."""

    name: str
    speed: float
    pitch: int | None
    seed: int

    @property
    def label(self) -> str:
        """Stored in the manifest's ``voice`` field, e.g. ``en-gb+r158+p41`` or ``af_heart+s1.04``."""
        if self.pitch is not None:  # espeak: the exact engine parameters
            return f"{self.name}+r{espeak_rate(self.speed)}+p{self.pitch}"
        return f"{self.name}+s{self.speed:.2f}"


def espeak_rate(speed: float) -> int:
    return int(min(450, max(80, round(ESPEAK_BASE_WPM * speed))))


@dataclass(frozen=True)
class VoicePlan:
    """The seeded rule: each row id maps to one voice, speed and pitch, independent of order."""

    names: tuple[str, ...]
    speed: tuple[float, float]
    pitch: tuple[int, int] | None
    seed: int

    @classmethod
    def for_backend(cls, backend: "Backend", cfg: TTSConfig, seed: int) -> "VoicePlan":
        names = tuple(cfg.voices) or backend.default_voices()
        pitch = (cfg.pitch[0], cfg.pitch[1]) if backend.name == "espeak" else None
        return cls(names, (cfg.speed[0], cfg.speed[1]), pitch, seed)

    def pick(self, row_id: str) -> VoiceChoice:
        # random.Random seeds a str through SHA-512: stable across processes and Python runs.
        rng = random.Random(f"{self.seed}:{row_id}")
        name = self.names[rng.randrange(len(self.names))]
        speed = round(rng.uniform(*self.speed), 2)
        pitch = rng.randint(*self.pitch) if self.pitch else None
        return VoiceChoice(name, speed, pitch, rng.getrandbits(31))


def finish(audio: np.ndarray, sr: int) -> np.ndarray:
    """Any engine's output -> 16 kHz mono float32, loudness-normalised."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    return loudness_normalize(resample(audio, sr, SAMPLE_RATE))


class Backend:
    """What the job needs from an engine. `threads_per_core` is the job's default parallelism."""

    name: str = ""
    description: str = ""
    licence: str = ""
    threads_per_core: int = 1

    def default_voices(self) -> tuple[str, ...]:
        raise NotImplementedError

    def synthesize(self, text: str, voice: VoiceChoice) -> np.ndarray:
        raise NotImplementedError

    def check_voices(self, names: tuple[str, ...]) -> None:
        """Fail before the job starts when a configured voice does not exist."""
        known = set(self.default_voices())
        bad = [n for n in names if n not in known]
        if bad:
            raise BackendError(f"tts.voices: {bad} not available in {self.description}; "
                               f"choose from {sorted(known)}")
