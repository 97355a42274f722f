"""espeak-ng text-to-speech, through the ``espeak-ng`` executable or libespeak-ng via ctypes.

espeak-ng is a formant synthesiser: robotic, but tiny, deterministic and CPU-only, which
makes it a good source of spoken questions for small recipes and tests. Two backends:

* ``binary``: runs ``espeak-ng --stdout`` (apt package ``espeak-ng``) once per utterance.
* ``library``: loads libespeak-ng from the ``espeakng-loader`` wheel with ctypes and
  synthesises in-process; one engine per process, calls serialised by a lock.

Both return float32 mono audio at the engine's native rate (22050 Hz);
``synthesize_16k`` converts to cordlite's 16 kHz, loudness-normalised format.
``synthesize_16k_with_words`` (library backend only) also returns when each word starts, from
espeak's own word events: a forced alignment for free.
"""

from __future__ import annotations

import ctypes
import io
import shutil
import subprocess
import threading
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from cordlite.audio import SAMPLE_RATE, loudness_normalize, resample

BACKENDS = ("auto", "binary", "library")

# English voices shipped with espeak-ng 1.51 (apt) and 1.52 (espeakng-loader wheel).
ENGLISH_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)

# espeak-ng accepts 80..450 words per minute; values outside are silently clamped,
# which would make Voice.label lie about what was synthesised.
_RATE_RANGE = (80, 450)
_PITCH_RANGE = (0, 99)
_BINARY_TIMEOUT_S = 60.0


def list_voices() -> list[str]:
    """English voice names that both backends accept."""
    return list(ENGLISH_VOICES)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: name (optionally with a ``+variant``), rate in words/minute, pitch 0-99."""

    name: str = "en-us"
    rate: int = 170
    pitch: int = 50

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name) or self.name.startswith("-"):
            raise ValueError(
                f"Voice.name={self.name!r} is not a voice name; use one of {list(ENGLISH_VOICES)} "
                "or see `espeak-ng --voices`"
            )
        lo, hi = _RATE_RANGE
        if not lo <= self.rate <= hi:
            raise ValueError(f"Voice.rate={self.rate} must be in {lo}..{hi} words per minute")
        lo, hi = _PITCH_RANGE
        if not lo <= self.pitch <= hi:
            raise ValueError(f"Voice.pitch={self.pitch} must be in {lo}..{hi}")

    @property
    def label(self) -> str:
        """Compact identifier stored in manifests, e.g. ``en-us+r170+p50``."""
        return f"{self.name}+r{self.rate}+p{self.pitch}"


# --- library backend -------------------------------------------------------------------

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it espeak calls exit() when data is missing
_POS_CHARACTER = 1
_CHARS_AUTO = 0
_ENDPAUSE = 0x1000  # the executable adds the sentence-final pause too; keeps backends alike
_PARAM_RATE = 1
_PARAM_PITCH = 3
_ERROR_NAMES = {-1: "EE_INTERNAL_ERROR", 1: "EE_BUFFER_FULL", 2: "EE_NOT_FOUND"}
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1


class _Event(ctypes.Structure):
    """espeak_EVENT from speak_lib.h (the trailing union `id` is 8 bytes)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # sample index in the output at the native rate
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]



class _VoiceSpec(ctypes.Structure):
    """espeak_VOICE from speak_lib.h, used to select a voice by language."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakLibrary:
    """The process-wide libespeak-ng engine (espeak keeps global state, so one instance)."""

    _instance: _EspeakLibrary | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> _EspeakLibrary:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise RuntimeError(
                "espeak library backend needs the espeakng-loader wheel; "
                "`pip install espeakng-loader` or use backend='binary' (apt-get install espeak-ng)"
            ) from exc
        lib_path = espeakng_loader.get_library_path()
        data_path = espeakng_loader.get_data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise RuntimeError(f"could not load libespeak-ng from {lib_path}: {exc}") from exc

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_VoiceSpec)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int

        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise RuntimeError(
                f"espeak_Initialize failed (returned {sample_rate}) with data path {data_path}; "
                "reinstall espeakng-loader or use backend='binary'"
            )
        self.sample_rate = int(sample_rate)
        self._lib = lib
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int, int]] | None = None  # (char start, length, sample) while recording
        # Keep a reference: ctypes frees the C thunk when the Python object is collected.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes._Pointer, n_samples: int, events: int) -> int:
        # Called from inside espeak_Synth (same thread, lock held); wav is only valid
        # during the call, so copy. A NULL wav marks the end of the utterance.
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        if events and self._words is not None:
            event = ctypes.cast(events, ctypes.POINTER(_Event))
            i = 0
            while event[i].type != _EVENT_LIST_TERMINATED:
                if event[i].type == _EVENT_WORD:
                    self._words.append((event[i].text_position - 1, event[i].length, event[i].sample))
                i += 1
        return 0  # non-zero would abort synthesis

    def synthesize_with_words(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """PCM and the (char start, char length, start sample) of every word espeak spoke."""
        with self._lock:
            self._words = []
            try:
                pcm = self._synthesize_locked(text, voice)
                words = self._words
            finally:
                self._words = None
        return pcm, words

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        with self._lock:
            return self._synthesize_locked(text, voice)

    def _synthesize_locked(self, text: str, voice: Voice) -> np.ndarray:
        rc = self._lib.espeak_SetVoiceByName(voice.name.encode())
        if rc != 0:
            # Names such as "en-gb" are languages, not voice names; the executable
            # retries them as a language lookup, and so must we to pick the same voice.
            # Side effect (in both backends): "no-such-voice" matches Norwegian ("no").
            spec = _VoiceSpec(languages=voice.name.encode())
            rc = self._lib.espeak_SetVoiceByProperties(ctypes.byref(spec))
        if rc != 0:
            raise RuntimeError(
                f"espeak library: voice {voice.name!r} not available "
                f"({_ERROR_NAMES.get(rc, rc)}); pick one of {list(ENGLISH_VOICES)}"
            )
        # Set after the voice: selecting a voice may reset prosody parameters.
        self._lib.espeak_SetParameter(_PARAM_RATE, voice.rate, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        rc = self._lib.espeak_Synth(
            data, len(data), 0, _POS_CHARACTER, 0, _CHARS_AUTO | _ENDPAUSE, None, None
        )
        chunks, self._chunks = self._chunks, []
        if rc != 0:
            raise RuntimeError(
                f"espeak library: espeak_Synth failed ({_ERROR_NAMES.get(rc, rc)}) "
                f"for voice {voice.label} and text {text[:60]!r}"
            )
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)


# --- public engine ---------------------------------------------------------------------


class EspeakTTS:
    """espeak-ng synthesiser; ``backend`` is "binary", "library" or "auto" (binary if on PATH)."""

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"EspeakTTS backend={backend!r}; use one of {BACKENDS}")
        self._exe: str | None = None
        self._lib: _EspeakLibrary | None = None
        if backend in ("auto", "binary"):
            self._exe = shutil.which("espeak-ng")
            if self._exe is not None:
                self.backend = "binary"
                return
            if backend == "binary":
                raise RuntimeError(
                    "espeak-ng executable not found on PATH; `apt-get install espeak-ng` "
                    "or use backend='library' (pip install espeakng-loader)"
                )
        try:
            self._lib = _EspeakLibrary.get()
        except RuntimeError as exc:
            if backend == "library":
                raise
            raise RuntimeError(
                "no espeak-ng backend available: the espeak-ng executable is not on PATH and "
                f"the library backend failed ({exc}); `apt-get install espeak-ng` or "
                "`pip install espeakng-loader`"
            ) from exc
        self.backend = "library"

    def synthesize(self, text: str, voice: Voice = Voice()) -> tuple[np.ndarray, int]:
        """Speak ``text``; returns (float32 mono samples in [-1, 1], native sample rate)."""
        if not text or not text.strip():
            raise ValueError("espeak: text to synthesise is empty; pass a non-blank string")
        if self._lib is not None:
            pcm = self._lib.synthesize(text, voice)
            sr = self._lib.sample_rate
        else:
            pcm, sr = self._run_binary(text, voice)
        if pcm.size == 0:
            raise RuntimeError(
                f"espeak ({self.backend}) produced no audio for {text[:60]!r} with voice {voice.label}"
            )
        return pcm.astype(np.float32) / np.float32(32768.0), sr

    def synthesize_16k(self, text: str, voice: Voice = Voice()) -> np.ndarray:
        """Speak ``text`` as cordlite input audio: 16 kHz float32 mono, loudness-normalised."""
        audio, sr = self.synthesize(text, voice)
        return loudness_normalize(resample(audio, sr, SAMPLE_RATE))

    def synthesize_16k_with_words(self, text: str, voice: Voice = Voice()) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
        """``synthesize_16k`` plus (char start, char length, start in seconds) of every word.

        Library backend only: the executable does not report word positions."""
        if self._lib is None:
            raise RuntimeError("word timings need the espeak library backend; use EspeakTTS('library') "
                               "(pip install espeakng-loader)")
        if not text or not text.strip():
            raise ValueError("espeak: text to synthesise is empty; pass a non-blank string")
        pcm, words = self._lib.synthesize_with_words(text, voice)
        if pcm.size == 0:
            raise RuntimeError(f"espeak (library) produced no audio for {text[:60]!r} with voice {voice.label}")
        sr = self._lib.sample_rate
        audio = loudness_normalize(resample(pcm.astype(np.float32) / np.float32(32768.0), sr, SAMPLE_RATE))
        return audio, [(start, length, sample / sr) for start, length, sample in words]

    def _run_binary(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        assert self._exe is not None
        # Text goes through stdin so that leading "-" or shell characters are never
        # parsed as options; -b 1 declares it UTF-8.
        cmd = [
            self._exe, "-b", "1", "-v", voice.name,
            "-s", str(voice.rate), "-p", str(voice.pitch), "--stdout",
        ]
        try:
            proc = subprocess.run(
                cmd, input=text.encode("utf-8"), capture_output=True,
                timeout=_BINARY_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"espeak-ng timed out after {_BINARY_TIMEOUT_S:.0f}s on {text[:60]!r}"
            ) from exc
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or len(proc.stdout) <= 44:
            raise RuntimeError(
                f"espeak-ng failed (exit {proc.returncode}) for voice {voice.label}: "
                f"{stderr or 'no output'}; check `espeak-ng --voices=en` for valid names"
            )
        # The WAV header on a pipe carries placeholder sizes; libsndfile tolerates that.
        try:
            pcm, sr = sf.read(io.BytesIO(proc.stdout), dtype="int16", always_2d=True)
        except RuntimeError as exc:
            raise RuntimeError(f"espeak-ng wrote unreadable WAV data: {exc}; stderr: {stderr}") from exc
        return pcm[:, 0], int(sr)
