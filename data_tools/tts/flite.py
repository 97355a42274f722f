"""The flite backend: CMU's small natural-sounding synthesiser, run as a program (one per row).

    apt-get install flite                        # Debian: flite 2.2, voices compiled in
    cordlite data tts -i questions.jsonl -o data/spoken --backend flite

flite 2.2 ships five English voices in its binary: slt (US female), rms (US male), awb (Scottish
male), kal16 and kal (US male, diphone). The default set is the four unit-selection/HTS-quality
ones (slt, rms, awb, kal16); `tts.voices` picks others, `tts.speed` stretches durations
(duration_stretch = 1 / speed). Output is 16 kHz mono, loudness-normalised like every backend.
Licence: BSD-style (CMU flite and the CMU ARCTIC / Kal voices it compiles in).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from data_tools.tts.base import Backend, BackendError, VoiceChoice, finish

FLITE_VOICES = ("slt", "rms", "awb", "kal16")  # the natural ones; kal and awb_time are left out by default
_TIMEOUT_S = 60.0


class FliteBackend(Backend):
    name = "flite"
    licence = "flite 2.2 (CMU, BSD-style licence) with its compiled-in CMU ARCTIC and Kal voices"
    threads_per_core = 2  # a process per row: one thread waits on it while another uses the core

    def __init__(self) -> None:
        self._binary = shutil.which("flite")
        if self._binary is None:
            raise BackendError("tts.backend: flite, but no flite program on PATH; install it "
                               "(apt-get install flite) or choose another backend")
        try:
            listed = subprocess.run([self._binary, "-lv"], capture_output=True, text=True, timeout=_TIMEOUT_S,
                                    check=True).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise BackendError(f"{self._binary} -lv failed ({e}); reinstall flite") from None
        self._voices = tuple(listed.split(":", 1)[-1].split())
        self.description = f"flite ({self._binary})"

    def default_voices(self) -> tuple[str, ...]:
        return tuple(v for v in FLITE_VOICES if v in self._voices) or self._voices

    def check_voices(self, names: tuple[str, ...]) -> None:
        bad = [n for n in names if n not in self._voices]
        if bad:
            raise BackendError(f"tts.voices: {bad} not among flite's voices {list(self._voices)}")

    def synthesize(self, text: str, voice: VoiceChoice) -> np.ndarray:
        return self.speak(text, voice.name, voice.speed)

    def speak(self, text: str, name: str, speed: float = 1.0, f0: int | None = None) -> np.ndarray:
        """16 kHz mono float32 of `text` in voice `name` at `speed`; `f0` sets the target mean
        pitch in Hz (obeyed by the diphone voices kal and kal16, ignored by the others)."""
        # The text goes through a file: as an argument, a text starting with "-" would be an option.
        with tempfile.TemporaryDirectory(prefix="cordlite-flite-") as tmp:
            src, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
            src.write_text(text, encoding="utf-8")
            cmd = [self._binary, "-voice", name, "--setf", f"duration_stretch={1.0 / speed:.4f}"]
            if f0 is not None:
                cmd += ["--setf", f"int_f0_target_mean={int(f0)}"]
            cmd += ["-f", str(src), "-o", str(wav)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise BackendError(f"flite took over {_TIMEOUT_S:.0f} s on one row ({len(text)} characters)") from None
            if done.returncode != 0 or not wav.is_file():
                raise BackendError(f"flite failed with exit code {done.returncode}: {done.stderr.strip()[-300:]}")
            audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        return finish(audio.mean(axis=1), sr)
