"""Tests for cordlite.data: manifest parsing (all problems at once) and the seeded, resumable data order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cordlite.data import ManifestError, batch_indices, epoch_order, read_manifest
from cordlite.files import append_jsonl, read_jsonl, write_jsonl_atomic


def _wav(path: Path, seconds: float = 0.5, sr: int = 16000, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def _manifest(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# --------------------------------------------------------------------------- read_manifest


def test_good_rows_parse(tmp_path: Path):
    root = tmp_path / "set"
    _wav(root / "audio" / "q0.wav")
    absolute = _wav(tmp_path / "elsewhere" / "q1.wav")
    manifest = _manifest(root / "manifest.jsonl", [
        {"id": "q0", "audio_path": "audio/q0.wav", "question": "What is 3 times 4?", "answer": 12,
         "duration": 0.5, "voice": "en-us"},
        "",  # blank lines are skipped
        {"id": "q1", "audio_path": str(absolute), "question": "Capital of Italy?",
         "choices": ["Paris", "Rome", "Oslo", "Bern"], "answer": "B"},
    ])
    examples = read_manifest(manifest)
    assert [ex.id for ex in examples] == ["q0", "q1"]

    q0, q1 = examples
    assert q0.audio_path == root / "audio" / "q0.wav"  # relative to the manifest's directory
    assert q0.audio_path.is_file()
    assert q0.question == "What is 3 times 4?"
    assert q0.answer == "12"  # stored as text
    assert q0.choices is None
    assert q0.meta == {"duration": 0.5, "voice": "en-us"}  # extra keys kept

    assert q1.audio_path == absolute  # absolute paths kept
    assert q1.choices == ["Paris", "Rome", "Oslo", "Bern"]
    assert q1.answer == "B"
    assert q1.meta == {}


def test_relative_paths_do_not_depend_on_cwd(tmp_path: Path, monkeypatch):
    root = tmp_path / "set"
    _wav(root / "a.wav")
    manifest = _manifest(root / "manifest.jsonl", [{"id": "a", "audio_path": "a.wav", "question": "q?"}])
    monkeypatch.chdir(tmp_path)
    [ex] = read_manifest(Path("set") / "manifest.jsonl")
    assert ex.audio_path.resolve() == (root / "a.wav").resolve()
    assert read_manifest(manifest)[0].audio_path == root / "a.wav"


def test_missing_audio_allowed_without_check(tmp_path: Path):
    manifest = _manifest(tmp_path / "manifest.jsonl", [{"id": "a", "audio_path": "a.wav", "question": "q?"}])
    [ex] = read_manifest(manifest, check_audio_exists=False)
    assert ex.audio_path == tmp_path / "a.wav"


def test_every_bad_row_in_one_error(tmp_path: Path):
    _wav(tmp_path / "ok.wav")
    manifest = _manifest(tmp_path / "manifest.jsonl", [
        {"id": "ok", "audio_path": "ok.wav", "question": "fine?"},                       # 1 good
        '{"id": "broken", "audio_path": "ok.wav", ',                                      # 2 bad JSON
        {"id": "noq", "audio_path": "ok.wav"},                                            # 3 missing question
        {"id": "ok", "audio_path": "ok.wav", "question": "again?"},                       # 4 duplicate id
        {"id": "nowav", "audio_path": "missing.wav", "question": "where?"},               # 5 missing audio
        {"id": "ch", "audio_path": "ok.wav", "question": "pick?", "choices": "A or B"},   # 6 choices not a list
        {"id": "ok2", "audio_path": "ok.wav", "question": "fine too?"},                   # 7 good
        "[1, 2]",                                                                         # 8 not an object
        {"id": "blankq", "audio_path": "ok.wav", "question": "   "},                      # 9 empty question
    ])
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    msg = str(info.value)
    assert str(manifest) in msg
    assert "7 bad row(s)" in msg
    bad_lines = {int(n) for n in re.findall(r"line (\d+):", msg)}
    assert bad_lines == {2, 3, 4, 5, 6, 8, 9}
    assert re.search(r"line 2: not valid JSON", msg)
    assert re.search(r"line 3: .*question", msg)
    assert re.search(r"line 4: duplicate id 'ok' \(first on line 1\)", msg)
    assert re.search(r"line 5: audio_path 'missing.wav' not found", msg)
    assert re.search(r"line 6: field choices must be a list", msg)
    assert re.search(r"line 8: expected a JSON object", msg)
    assert re.search(r"line 9: .*question", msg)


def test_choices_must_be_strings(tmp_path: Path):
    _wav(tmp_path / "ok.wav")
    manifest = _manifest(tmp_path / "manifest.jsonl", [
        {"id": "a", "audio_path": "ok.wav", "question": "q?", "choices": [1, 2]},
    ])
    with pytest.raises(ManifestError, match=r"line 1: field choices"):
        read_manifest(manifest)


def test_many_bad_rows_are_summarised(tmp_path: Path):
    manifest = _manifest(tmp_path / "manifest.jsonl", ["not json"] * 25)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    msg = str(info.value)
    assert "25 bad row(s)" in msg
    assert "line 20:" in msg and "line 21:" not in msg
    assert "... and 5 more" in msg


def test_non_utf8_bytes_name_the_line_and_a_byte_order_mark_is_fine(tmp_path: Path):
    _wav(tmp_path / "ok.wav")
    good = json.dumps({"id": "a", "audio_path": "ok.wav", "question": "Wie viel?"}).encode()
    bad = json.dumps({"id": "b", "audio_path": "ok.wav", "question": "caf\u00e9"}, ensure_ascii=False)
    bad = bad.encode("utf-8").replace("\u00e9".encode(), b"\xe9")  # latin-1's e-acute in otherwise UTF-8 JSON
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + bad + b"\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    msg = str(info.value)
    assert str(manifest) in msg
    assert re.search(r"line 2: not UTF-8 text \(byte 0xe9 at column \d+\); save the manifest as UTF-8", msg)
    assert "line 1" not in msg  # the byte order mark of line 1 is read as UTF-8
    manifest.write_bytes(b"\xef\xbb\xbf" + good + b"\n")
    assert [e.id for e in read_manifest(manifest)] == ["a"]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_manifest_is_an_error(tmp_path: Path, content: str):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(content)
    with pytest.raises(ManifestError, match="no rows") as info:
        read_manifest(manifest)
    assert str(manifest) in str(info.value)


def test_missing_manifest_is_an_error(tmp_path: Path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none.jsonl")


# --------------------------------------------------------------------------- data order


def test_batch_indices_deterministic_for_a_seed():
    a = [batch_indices(10, 3, s, seed=7) for s in range(10)]
    b = [batch_indices(10, 3, s, seed=7) for s in range(10)]
    assert a == b


def _stream(n: int, batch: int, steps: range, seed: int, shuffle: bool = True) -> list[int]:
    return [i for s in steps for i in batch_indices(n, batch, s, seed, shuffle)]


def test_each_epoch_is_a_permutation():
    stream = _stream(10, 3, range(10), seed=0)  # 30 positions = 3 full epochs
    assert len(stream) == 30
    epochs = [stream[i:i + 10] for i in range(0, 30, 10)]
    for e, epoch in enumerate(epochs):
        assert sorted(epoch) == list(range(10)), (e, epoch)
        assert tuple(epoch) == epoch_order(10, 0, e)
    # Epochs are reshuffled, not repeated.
    assert len({tuple(e) for e in epochs}) > 1


def test_batches_cross_epoch_boundaries():
    # Step 3 of n=10, batch 3 holds positions 9, 10, 11: the last of epoch 0 and the first two of epoch 1.
    assert batch_indices(10, 3, 3, seed=0) == [epoch_order(10, 0, 0)[9], *epoch_order(10, 0, 1)[:2]]


def test_seeds_differ():
    a = _stream(10, 3, range(10), seed=0)
    b = _stream(10, 3, range(10), seed=1)
    assert a != b
    assert sorted(a[:10]) == sorted(b[:10]) == list(range(10))


def test_no_shuffle_is_manifest_order():
    stream = _stream(10, 3, range(10), seed=5, shuffle=False)
    assert stream == list(range(10)) * 3
    assert batch_indices(10, 3, 0, seed=123, shuffle=False) == [0, 1, 2]


@pytest.mark.parametrize("start", [0, 1, 3, 4, 7])
def test_resume_replays_the_same_stream(start: int):
    unbroken = [batch_indices(10, 3, s, seed=3) for s in range(12)]
    epoch_order.cache_clear()  # a fresh process after a restart
    resumed = [batch_indices(10, 3, s, seed=3) for s in range(start, start + 5)]
    assert resumed == unbroken[start:start + 5]


def test_batch_larger_than_dataset():
    idx = batch_indices(3, 7, 0, seed=0)
    assert len(idx) == 7
    assert sorted(idx[:3]) == sorted(idx[3:6]) == [0, 1, 2]


def test_append_only_jsonl_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    assert read_jsonl(path) == []  # nothing written yet
    append_jsonl(path, [{"id": "a", "n": 1}])
    append_jsonl(path, [{"id": "b", "n": 2}, {"id": "c", "n": 3}])
    with path.open("a", encoding="utf-8") as f:
        f.write('[1, 2]\n{"id": "d", "n"')  # a non-object row, then a kill mid-line
    assert read_jsonl(path) == [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}]
    write_jsonl_atomic(path, read_jsonl(path)[:1])  # rewritten whole: the broken tail is gone
    assert path.read_text(encoding="utf-8") == '{"id": "a", "n": 1}\n'


def test_the_audio_cache_keeps_the_most_recently_used_clips_within_its_bytes(tmp_path: Path):
    """Three 1 s clips (16,000 float32 samples = 64,000 bytes each) in a cache of 0.15 MB: two fit, the
    least recently used one is dropped for the third; a clip read again comes from memory, not the
    file; max_mb 0 keeps nothing."""
    import soundfile as sf

    from cordlite.data import AudioCache, Example

    clips = []
    for i in range(3):
        path = tmp_path / f"c{i}.wav"
        sf.write(path, np.full(16000, 0.1 * (i + 1), dtype=np.float32), 16000, subtype="FLOAT")
        clips.append(Example(f"c{i}", path, "q"))
    cache = AudioCache(max_mb=0.15)
    cache(clips[0]), cache(clips[1])
    assert cache.bytes == 128_000
    cache(clips[0])  # c0 is now the most recent: c1 goes first
    cache(clips[2])
    assert list(cache._cache) == [clips[0].audio_path, clips[2].audio_path] and cache.bytes == 128_000
    clips[0].audio_path.unlink()  # served from memory
    assert float(cache(clips[0])[0]) == pytest.approx(0.1)
    none = AudioCache(max_mb=0)
    none(clips[1])
    assert none.bytes == 0 and not none._cache
