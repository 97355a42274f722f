"""The model TTS backends: Kokoro-82M (kokoro package) and VITS (transformers), local weights only.

Both run one forward at a time under a lock (torch already spreads one forward over the
cores) with the sampling noise seeded per row, so a row sounds the same on every run.
Started by data_tools.tts.backends.make_backend; torch and transformers are imported here only.

* VitsBackend(path): a folder saved with save_pretrained whose config has model_type "vits"
  (e.g. a download of facebook/mms-tts-eng, CC-BY-NC-4.0); the licence in its model card
  (README.md front matter) is reported in the job summary.
* KokoroBackend(path): a folder with config.json, kokoro-v1_0.pth and voices/*.pt from
  hexgrad/Kokoro-82M (Apache-2.0), driven through kokoro's KModel and KPipeline.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import threading
from pathlib import Path

import numpy as np

from data_tools.tts.base import Backend, BackendError, VoiceChoice, finish

KOKORO_REPO = "hexgrad/Kokoro-82M"
KOKORO_SAMPLE_RATE = 24000


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("tts.device: 'cuda' but no CUDA GPU is visible; use 'cpu' or 'auto'")
    return device


class _TorchBackend(Backend):
    """Shared by the model backends: one forward at a time (torch uses the cores itself),
    sampling noise seeded per row."""

    def __init__(self, device: str) -> None:
        self.device = _device(device)
        self._lock = threading.Lock()

    def synthesize(self, text: str, voice: VoiceChoice) -> np.ndarray:
        import torch

        rng_devices = [torch.cuda.current_device()] if self.device == "cuda" else []
        # fork_rng: the per-row seed must not leak into (or depend on) anyone else's RNG use.
        with self._lock, torch.inference_mode(), torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(voice.seed)
            audio, sr = self._forward(text, voice)
        if audio.size == 0:
            raise RuntimeError(f"{self.description} produced no audio for {text[:60]!r}")
        return finish(audio, sr)

    def _forward(self, text: str, voice: VoiceChoice) -> tuple[np.ndarray, int]:
        raise NotImplementedError


def _model_card_licence(folder: Path) -> str | None:
    """The `license:` of a Hugging Face model card (README.md front matter), if present."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    head = card.read_text(encoding="utf-8", errors="replace")[:4000]
    m = re.search(r"^---\s*\n(.*?)\n---", head, re.S)
    if not m:
        return None
    found = re.search(r"^license:\s*(\S+)", m.group(1), re.M)
    return found.group(1) if found else None


class VitsBackend(_TorchBackend):
    """A local VITS checkpoint loaded with transformers' VitsModel (e.g. MMS-TTS)."""

    name = "transformers"

    def __init__(self, path: str, device: str = "auto") -> None:
        folder = Path(path)
        config_file = folder / "config.json"
        if not path or not config_file.is_file():
            raise BackendError(
                f"tts.model={path!r}: no config.json there; the transformers backend loads a local "
                "VITS folder saved with save_pretrained (e.g. `huggingface-cli download "
                "facebook/mms-tts-eng --local-dir models/mms-tts-eng` on a machine with network)"
            )
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError) as e:
            raise BackendError(f"{config_file}: not a JSON object ({e})") from e
        if model_type != "vits":
            raise BackendError(
                f"{config_file}: model_type={model_type!r}; the transformers backend runs VITS models "
                "(model_type 'vits', e.g. facebook/mms-tts-eng). Other architectures such as SpeechT5 "
                "need a vocoder and speaker embeddings and are not supported"
            )
        super().__init__(device)
        from transformers import AutoTokenizer, VitsModel

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = VitsModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise BackendError(f"{folder}: could not load the VITS model or its tokenizer ({e})") from e
        if getattr(self.tokenizer, "phonemize", False) and importlib.util.find_spec("phonemizer") is None:
            raise BackendError(f"{folder}: this VITS tokenizer phonemizes its input and needs the "
                               "phonemizer package (pip install phonemizer) plus espeak-ng")
        self.sample_rate = int(self.model.config.sampling_rate)
        n = int(self.model.config.num_speakers)
        self._voices = tuple(f"speaker{i}" for i in range(n)) if n > 1 else ("vits",)
        licence = _model_card_licence(folder)
        self.licence = (f"model card licence: {licence}" if licence else
                        "see the model card (e.g. facebook/mms-tts-*: CC-BY-NC-4.0)")
        self.description = f"VITS {folder.name} ({self.device})"

    def default_voices(self) -> tuple[str, ...]:
        return self._voices

    def _forward(self, text: str, voice: VoiceChoice) -> tuple[np.ndarray, int]:
        inputs = self.tokenizer(text, return_tensors="pt")
        if inputs["input_ids"].shape[-1] == 0 or not inputs["input_ids"].any():
            raise ValueError(f"the VITS tokenizer kept no characters of {text[:60]!r} "
                             "(its vocabulary may not cover this script)")
        speaker = int(voice.name[len("speaker"):]) if voice.name.startswith("speaker") else None
        out = self.model(input_ids=inputs["input_ids"].to(self.device),
                         attention_mask=inputs["attention_mask"].to(self.device),
                         speaker_id=speaker, speaking_rate=voice.speed)
        return out.waveform[0].float().cpu().numpy(), self.sample_rate


def kokoro_files(folder: str) -> tuple[Path, Path, dict[str, Path]]:
    """(config.json, weights .pth, {voice name: .pt}) of a local Kokoro-82M folder, or BackendError."""
    how = (f"download {KOKORO_REPO} (Apache-2.0) on a machine with network, e.g. `huggingface-cli "
           f"download {KOKORO_REPO} --local-dir models/kokoro-82m`, copy the folder here and set tts.model")
    if not folder:
        raise BackendError(f"tts.model is empty; {how}")
    root = Path(folder)
    config = root / "config.json"
    weights = sorted(root.glob("*.pth"))
    voices = {p.stem: p for p in sorted((root / "voices").glob("*.pt"))}
    missing = [what for what, ok in (("config.json", config.is_file()), ("a *.pth weights file", bool(weights)),
                                     ("voices/*.pt", bool(voices))) if not ok]
    if missing:
        raise BackendError(f"tts.model={folder!r}: the Kokoro folder lacks {', '.join(missing)}; {how}")
    # Several .pth files (v0.19 and v1.0 side by side): the last by name, kokoro-v1_0 over v0_19.
    return config, weights[-1], voices


class KokoroBackend(_TorchBackend):
    """Kokoro-82M through the kokoro package (KModel + KPipeline), weights from a local folder."""

    name = "kokoro"
    licence = ("Kokoro-82M weights: Apache-2.0; kokoro and misaki packages: Apache-2.0 "
               "(misaki's out-of-vocabulary fallback calls espeak-ng, GPL-3.0-or-later)")

    def __init__(self, path: str, device: str = "auto") -> None:
        problems = []
        if importlib.util.find_spec("kokoro") is None:
            problems.append("the kokoro package is not installed (pip install kokoro; it brings "
                            "misaki[en], which needs spaCy's en_core_web_sm model installed offline)")
        try:
            config, weights, self._voice_files = kokoro_files(path)
        except BackendError as e:
            problems.append(str(e))
        if problems:
            raise BackendError("kokoro backend unavailable: " + "; ".join(problems))
        super().__init__(device)
        from kokoro import KModel

        kwargs = {"config": str(config), "model": str(weights)}
        if "repo_id" in inspect.signature(KModel.__init__).parameters:
            kwargs["repo_id"] = KOKORO_REPO  # only names the model; nothing is downloaded
        self.model = KModel(**kwargs).to(self.device).eval()
        self._pipelines: dict[str, object] = {}
        self._packs: dict[str, object] = {}
        self.description = f"Kokoro-82M {weights.name} ({self.device})"
        # Start the G2P now: a missing spaCy model should stop the job, not reject every row.
        for lang in sorted({n[0] for n in self.default_voices()}):
            try:
                self._pipeline(lang)
            except (Exception, SystemExit) as e:  # spaCy's model download can sys.exit offline
                raise BackendError(
                    f"kokoro: the text-to-phoneme pipeline for lang_code {lang!r} did not start ({e}); "
                    "misaki[en] needs spaCy's en_core_web_sm installed (pip install its wheel offline)"
                ) from e

    def default_voices(self) -> tuple[str, ...]:
        # American (a*) and British (b*) English voices; others need other G2P packages.
        return tuple(n for n in self._voice_files if n[:1] in ("a", "b"))

    def check_voices(self, names: tuple[str, ...]) -> None:
        bad = [n for n in names if n not in self._voice_files]
        if bad:
            raise BackendError(f"tts.voices: {bad} not in the voices/ folder; choose from {sorted(self._voice_files)}")

    def _pipeline(self, lang: str):
        if lang not in self._pipelines:
            from kokoro import KPipeline

            kwargs = {"lang_code": lang, "model": self.model}
            if "repo_id" in inspect.signature(KPipeline.__init__).parameters:
                kwargs["repo_id"] = KOKORO_REPO
            self._pipelines[lang] = KPipeline(**kwargs)
        return self._pipelines[lang]

    def _forward(self, text: str, voice: VoiceChoice) -> tuple[np.ndarray, int]:
        import torch

        if voice.name not in self._packs:
            self._packs[voice.name] = torch.load(self._voice_files[voice.name], weights_only=True)
        lang = voice.name[0] if voice.name[:1] in ("a", "b") else "a"
        pipeline = self._pipeline(lang)
        # kokoro >= 0.9 yields Result objects with .audio; older releases yield (graphemes, phonemes, audio).
        results = pipeline(text, voice=self._packs[voice.name], speed=voice.speed)
        chunks = [a for a in (getattr(r, "audio", None) if hasattr(r, "audio") else r[2] for r in results)
                  if a is not None]
        if not chunks:
            return np.zeros(0, dtype=np.float32), KOKORO_SAMPLE_RATE
        return torch.cat([c.reshape(-1).float().cpu() for c in chunks]).numpy(), KOKORO_SAMPLE_RATE
