"""Tests for cordlite.audio, the espeak-ng backends and the tiny spoken question set."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cordlite.audio import (
    SAMPLE_RATE,
    AudioError,
    load_audio,
    loudness_normalize,
    write_audio_atomic,
)
from data_tools.tiny_spoken import make_tiny_spoken_set
from data_tools.tts.espeak import EspeakTTS, Voice, list_voices

HAS_BINARY = shutil.which("espeak-ng") is not None
HAS_LIBRARY = importlib.util.find_spec("espeakng_loader") is not None


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)])


def _dbfs(audio: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@pytest.mark.parametrize(
    ("sr", "channels", "subtype"),
    [(8000, 1, "PCM_16"), (22050, 1, "PCM_16"), (44100, 2, "PCM_16"), (16000, 1, "FLOAT")],
)
def test_load_audio_resamples_to_16k_mono(tmp_path: Path, sr: int, channels: int, subtype: str) -> None:
    seconds, freq = 1.25, 440.0
    mono = _sine(freq, sr, seconds)
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, data, sr, subtype=subtype)

    audio = load_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(mono) * SAMPLE_RATE / sr) <= 1
    # Bin width at 1.25 s is 0.8 Hz; allow two bins of leakage.
    assert abs(_dominant_hz(audio, SAMPLE_RATE) - freq) <= 1.6
    assert 0.45 < np.max(np.abs(audio)) < 0.55


def test_load_audio_averages_channels(tmp_path: Path) -> None:
    left = _sine(300.0, SAMPLE_RATE, 0.5)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), SAMPLE_RATE)
    audio = load_audio(path)
    np.testing.assert_allclose(audio, left / 2, atol=2e-4)


def test_load_audio_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav") as info:
        load_audio(missing)
    assert str(missing) in str(info.value)


def test_load_audio_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioError, match="garbage.wav"):
        load_audio(bad)


@pytest.mark.parametrize("amp", [0.01, 0.3])
def test_loudness_normalize_hits_target(amp: float) -> None:
    audio = _sine(220.0, SAMPLE_RATE, 1.0, amp=amp)
    out = loudness_normalize(audio, target_dbfs=-20.0)
    assert abs(_dbfs(out) - -20.0) < 0.1
    assert out.dtype == np.float32


def test_loudness_normalize_peak_limit_and_silence() -> None:
    # One spike in near-silence: the RMS target would need a peak far above 1.
    spiky = np.zeros(16000, dtype=np.float32)
    spiky[100] = 0.5
    out = loudness_normalize(spiky, target_dbfs=-20.0, peak_limit=0.99)
    assert np.max(np.abs(out)) == pytest.approx(0.99, abs=1e-6)

    silent = np.zeros(1000, dtype=np.float32)
    np.testing.assert_array_equal(loudness_normalize(silent), silent)


def test_write_audio_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    audio = _sine(500.0, SAMPLE_RATE, 0.5)
    target = tmp_path / "nested" / "dir" / "out.wav"
    write_audio_atomic(target, audio)
    write_audio_atomic(target, audio * 0.5)  # overwrite in place

    assert sorted(p.name for p in target.parent.iterdir()) == ["out.wav"]
    info = sf.info(target)
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    np.testing.assert_allclose(load_audio(target), audio * 0.5, atol=1e-4)


def test_write_audio_atomic_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"\.xyz"):
        write_audio_atomic(tmp_path / "out.xyz", np.zeros(10, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def _tts_or_skip(backend: str) -> EspeakTTS:
    if backend == "binary" and not HAS_BINARY:
        pytest.skip("espeak-ng executable not installed (apt-get install espeak-ng)")
    if backend == "library" and not HAS_LIBRARY:
        pytest.skip("espeakng_loader not installed (pip install espeakng-loader)")
    return EspeakTTS(backend)


@pytest.mark.parametrize("backend", ["binary", "library"])
def test_espeak_synthesis(backend: str) -> None:
    tts = _tts_or_skip(backend)
    assert tts.backend == backend
    audio, sr = tts.synthesize("what is three plus four", Voice())
    assert sr > 0 and audio.dtype == np.float32
    assert 0.5 < len(audio) / sr < 5.0
    assert np.max(np.abs(audio)) <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01

    audio16 = tts.synthesize_16k("what is three plus four", Voice())
    assert abs(len(audio16) / SAMPLE_RATE - len(audio) / sr) < 0.01
    assert abs(_dbfs(audio16) - -20.0) < 0.1


@pytest.mark.parametrize("backend", ["binary", "library"])
def test_espeak_every_listed_voice_works(backend: str) -> None:
    tts = _tts_or_skip(backend)
    for name in list_voices():
        audio, sr = tts.synthesize("seven", Voice(name, rate=170, pitch=50))
        assert 0.2 < len(audio) / sr < 2.0, name


@pytest.mark.parametrize("backend", ["binary", "library"])
def test_espeak_errors(backend: str) -> None:
    tts = _tts_or_skip(backend)
    with pytest.raises(ValueError):
        tts.synthesize("   ", Voice())
    # Not a name like "no-such-voice": espeak falls back to a language match ("no" = Norwegian).
    with pytest.raises(RuntimeError, match="bogusvoice"):
        tts.synthesize("hello", Voice("bogusvoice"))
    # Text that looks like a command-line option must be spoken, not parsed.
    audio, sr = tts.synthesize("-5 --help", Voice())
    assert len(audio) / sr > 0.3


@pytest.mark.skipif(not (HAS_BINARY and HAS_LIBRARY), reason="needs both espeak backends")
def test_espeak_backends_agree() -> None:
    voice = Voice("en-gb", rate=150, pitch=40)
    text = "What is 15 minus 8?"
    a, sr_a = EspeakTTS("binary").synthesize(text, voice)
    b, sr_b = EspeakTTS("library").synthesize(text, voice)
    assert sr_a == sr_b
    assert abs(len(a) - len(b)) / len(a) < 0.03


def test_auto_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    import data_tools.tts.espeak as espeak

    if HAS_LIBRARY:
        monkeypatch.setattr(espeak.shutil, "which", lambda _name: None)
        assert EspeakTTS("auto").backend == "library"

    def no_library() -> None:
        raise RuntimeError("libespeak-ng missing")

    monkeypatch.setattr(espeak.shutil, "which", lambda _name: None)
    monkeypatch.setattr(espeak._EspeakLibrary, "get", staticmethod(no_library))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        EspeakTTS("auto")
    with pytest.raises(ValueError, match="backend"):
        EspeakTTS("festival")


def test_voice_validation() -> None:
    assert Voice().label == "en-us+r170+p50"
    with pytest.raises(ValueError, match="pitch"):
        Voice(pitch=120)
    with pytest.raises(ValueError, match="rate"):
        Voice(rate=10)
    with pytest.raises(ValueError, match="name"):
        Voice(name="-v en")


@pytest.mark.skipif(not (HAS_BINARY or HAS_LIBRARY), reason="no espeak-ng backend installed")
def test_make_tiny_spoken_set(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    manifest = make_tiny_spoken_set(out, n_questions=8, seed=0)
    assert manifest == out / "manifest.jsonl"

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 8
    assert len({r["id"] for r in rows}) == 8
    assert len({r["question"] for r in rows}) == 8
    keys = {"id", "audio_path", "question", "answer", "choices", "duration", "voice", "source"}
    for row in rows:
        assert set(row) == keys
        assert row["source"] == "tiny_spoken_arith"
        wav = manifest.parent / row["audio_path"]
        assert wav.is_file()
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert row["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        if row["choices"] is None:
            assert row["answer"].isdigit()
        else:
            assert len(row["choices"]) == 4 and row["answer"] in "ABCD"
            chosen = row["choices"]["ABCD".index(row["answer"])]
            assert f"{row['answer']}. {chosen}." in row["question"]
    assert any(r["choices"] for r in rows) and any(r["choices"] is None for r in rows)
    assert not list((out / "audio").glob(".*"))

    # Second call: manifest untouched, nothing regenerated.
    before = manifest.stat().st_mtime_ns
    wav_before = (out / rows[0]["audio_path"]).stat().st_mtime_ns
    assert make_tiny_spoken_set(out, n_questions=8, seed=0) == manifest
    assert manifest.stat().st_mtime_ns == before
    assert (out / rows[0]["audio_path"]).stat().st_mtime_ns == wav_before

    # Reusing the directory with other arguments is refused rather than silently mixed.
    with pytest.raises(ValueError, match="different question set"):
        make_tiny_spoken_set(out, n_questions=9, seed=0)


def test_tiny_spoken_questions_deterministic() -> None:
    from data_tools.tiny_spoken import generate_questions

    a, b = generate_questions(48, seed=3), generate_questions(48, seed=3)
    assert a == b
    assert generate_questions(48, seed=4) != a
    for q in a:
        assert 140 <= q.voice.rate <= 190 and 35 <= q.voice.pitch <= 65


# --------------------------------------------------------------------------- flite


needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")


@needs_flite
def test_flite_speaks_16k_mono_in_each_default_voice_and_speed_stretches() -> None:
    from data_tools.tts.base import VoiceChoice
    from data_tools.tts.flite import FliteBackend

    tts = FliteBackend()
    assert tts.default_voices() == ("slt", "rms", "awb", "kal16")
    text = "Mia has 7 shells. She finds 5 more."
    clips = {v: tts.synthesize(text, VoiceChoice(v, 1.0, None, 0)) for v in tts.default_voices()}
    for voice, clip in clips.items():
        assert clip.dtype == np.float32 and clip.ndim == 1 and 1.0 < clip.size / SAMPLE_RATE < 6.0, voice
        assert abs(_dbfs(clip) - (-20.0)) < 1.5, voice  # loudness-normalised like every backend
    assert len({round(float(np.abs(c).mean()), 4) for c in clips.values()}) == 4  # four different voices
    slow = tts.synthesize(text, VoiceChoice("rms", 0.8, None, 0)).size
    fast = tts.synthesize(text, VoiceChoice("rms", 1.25, None, 0)).size
    assert fast < clips["rms"].size < slow  # duration_stretch = 1 / speed
    assert tts.synthesize("-5 plus 7", VoiceChoice("slt", 1.0, None, 0)).size > 0  # not read as an option


@needs_flite
def test_flite_unknown_voice_is_refused_before_the_job() -> None:
    from data_tools.tts.backends import make_backend
    from data_tools.tts.base import BackendError, TTSConfig

    with pytest.raises(BackendError, match=r"\['nobody'\] not among flite's voices"):
        make_backend(TTSConfig(backend="flite", voices=("nobody",)))


def test_flite_missing_says_how_to_install(monkeypatch) -> None:
    import data_tools.tts.flite as flite
    from data_tools.tts.base import BackendError

    monkeypatch.setattr(flite.shutil, "which", lambda _name: None)
    with pytest.raises(BackendError, match=r"apt-get install flite"):
        flite.FliteBackend()


@needs_flite
def test_flite_tts_job_end_to_end(tmp_path: Path) -> None:
    from data_tools.job.build import build
    from data_tools.job.config import job_from_dict

    src = tmp_path / "q.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is {i} plus {i + 2}?", "answer": str(2 * i + 2)} for i in range(4)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = job_from_dict({"source": {"path": str(src)}, "output": {"dir": str(tmp_path / "out")}, "workers": 2,
                         "tts": {"backend": "flite"}})
    result = build(cfg, progress=False)
    rows = [json.loads(line) for line in result.manifest.read_text().splitlines()]
    assert result.new_rows == 4 and len(rows) == 4
    assert all(r["voice"].split("+")[0] in ("slt", "rms", "awb", "kal16") for r in rows)
    for r in rows:
        audio, sr = sf.read(str(tmp_path / "out" / r["audio_path"]))
        assert sr == SAMPLE_RATE and audio.ndim == 1 and audio.size > SAMPLE_RATE // 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["backend"].startswith("flite")
