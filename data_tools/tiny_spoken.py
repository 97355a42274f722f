"""Build the tiny spoken question set that the CPU recipe trains and evaluates on.

Questions are simple arithmetic (open answers such as "12") plus some multiple-choice
items whose spoken text reads the options out ("... A. Paris. B. Rome. ..."), as
VoiceBench renders them, so every answer can be checked by string comparison.
Audio is synthesised with espeak-ng using a seeded spread of voices, rates and pitches.

Output layout::

    out_dir/manifest.jsonl      one JSON object per question; written last, atomically
    out_dir/audio/q0001.wav     16 kHz mono PCM16, loudness-normalised

The manifest only appears once every audio file is in place, so its presence means the
set is complete and a rerun returns it immediately.

Usage: ``python -m data_tools.tiny_spoken OUT_DIR [--n 48] [--seed 0] [--backend auto]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cordlite.audio import SAMPLE_RATE, write_audio_atomic
from cordlite.files import write_jsonl_atomic
from data_tools.tts.espeak import EspeakTTS, Voice

SOURCE = "tiny_spoken_arith"
MANIFEST_NAME = "manifest.jsonl"
AUDIO_DIR = "audio"
LETTERS = ("A", "B", "C", "D")

# Voices that sound distinct and exist in espeak-ng 1.51 and 1.52 under both backends.
VOICE_NAMES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
RATE_RANGE = (140, 190)
PITCH_RANGE = (35, 65)

# Every fourth question is multiple choice; the rest have open numeric answers.
MC_EVERY = 4

CAPITALS = (
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Russia", "Moscow"),
    ("Greece", "Athens"),
)

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "ten", "eleven", "twelve")


@dataclass(frozen=True)
class SpokenQuestion:
    """One row of the set before synthesis."""

    id: str
    question: str
    answer: str
    choices: list[str] | None
    voice: Voice


def _open_question(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("plus", "minus", "times", "divided", "apples"))
    if kind == "plus":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return f"What is {a} plus {b}?", str(a + b)
    if kind == "minus":
        a = rng.randint(2, 30)
        b = rng.randint(1, a - 1)
        return f"What is {a} minus {b}?", str(a - b)
    if kind == "times":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", str(a * b)
    if kind == "divided":
        # Build from the quotient so the division is always exact.
        b, q = rng.randint(2, 10), rng.randint(2, 10)
        return f"What is {b * q} divided by {b}?", str(q)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return (
        f"If you have {_NUMBER_WORDS[a]} apples and get {_NUMBER_WORDS[b]} more, "
        "how many apples do you have?",
        str(a + b),
    )


def _choice_question(rng: random.Random) -> tuple[str, str, list[str], str]:
    if rng.random() < 0.5:
        country, capital = rng.choice(CAPITALS)
        others = [c for _, c in CAPITALS if c != capital]
        options = [capital, *rng.sample(others, 3)]
        stem = f"What is the capital of {country}?"
        correct = capital
    else:
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        value = a + b
        # Near-miss distractors: a listener who mishears one operand lands on one of them.
        pool = [value + d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0]
        options = [str(value), *map(str, rng.sample(pool, 3))]
        stem = f"What is {a} plus {b}?"
        correct = str(value)
    rng.shuffle(options)
    letter = LETTERS[options.index(correct)]
    spoken = stem + " " + " ".join(f"{L}. {opt}." for L, opt in zip(LETTERS, options))
    return stem, spoken, options, letter


def _voice_for(rng: random.Random, index: int, offset: int) -> Voice:
    # Cycling names (from a seeded start) guarantees every voice appears even in tiny sets.
    return Voice(
        name=VOICE_NAMES[(index + offset) % len(VOICE_NAMES)],
        rate=rng.randint(*RATE_RANGE),
        pitch=rng.randint(*PITCH_RANGE),
    )


def generate_questions(n_questions: int = 48, seed: int = 0) -> list[SpokenQuestion]:
    """The question rows for (n_questions, seed), deterministic and free of duplicates."""
    if n_questions < 1:
        raise ValueError(f"n_questions={n_questions} must be at least 1")
    rng = random.Random(seed)
    # A separate stream for voices so that question text does not depend on voice choices.
    voice_rng = random.Random(f"{seed}-voices")
    offset = voice_rng.randrange(len(VOICE_NAMES))
    width = max(4, len(str(n_questions)))
    seen: set[str] = set()
    rows: list[SpokenQuestion] = []
    attempts = 0
    while len(rows) < n_questions:
        attempts += 1
        if attempts > 50 * n_questions + 1000:
            raise ValueError(
                f"n_questions={n_questions}: only {len(rows)} distinct questions could be "
                "generated; use a smaller n_questions"
            )
        index = len(rows)
        if index % MC_EVERY == MC_EVERY - 1:
            stem, text, choices, answer = _choice_question(rng)
        else:
            (text, answer), choices = _open_question(rng), None
            stem = text
        # Dedupe on the stem: the same question with shuffled options is still a repeat.
        if stem in seen:
            continue
        seen.add(stem)
        rows.append(
            SpokenQuestion(
                id=f"q{index + 1:0{width}d}",
                question=text,
                answer=answer,
                choices=choices,
                voice=_voice_for(voice_rng, index, offset),
            )
        )
    return rows


def _check_existing(manifest: Path, expected: list[SpokenQuestion]) -> None:
    # Cheap guard against silently reusing a set built with other arguments.
    with open(manifest, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    got = [(r.get("id"), r.get("question"), r.get("voice")) for r in rows]
    want = [(q.id, q.question, q.voice.label) for q in expected]
    if got != want:
        raise ValueError(
            f"{manifest} exists but holds a different question set ({len(rows)} rows) than "
            f"n_questions={len(expected)} with this seed would produce; delete "
            f"{manifest.parent} or choose another out_dir"
        )


def make_tiny_spoken_set(
    out_dir: str | os.PathLike[str],
    n_questions: int = 48,
    seed: int = 0,
    backend: str = "auto",
) -> Path:
    """Synthesise the spoken question set into ``out_dir``; returns the manifest path.

    Idempotent: if ``out_dir/manifest.jsonl`` exists (and matches the arguments), it is
    returned without synthesising anything.
    """
    out = Path(out_dir)
    manifest = out / MANIFEST_NAME
    questions = generate_questions(n_questions, seed)
    if manifest.is_file():
        _check_existing(manifest, questions)
        return manifest

    audio_dir = out / AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)
    # Temp files from an interrupted run are never referenced; remove only our own pattern.
    for stale in audio_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)

    tts = EspeakTTS(backend)

    def render(q: SpokenQuestion) -> dict[str, object]:
        audio = tts.synthesize_16k(q.question, q.voice)
        rel = f"{AUDIO_DIR}/{q.id}.wav"
        write_audio_atomic(out / rel, audio, SAMPLE_RATE)
        return {
            "id": q.id,
            "audio_path": rel,
            "question": q.question,
            "answer": q.answer,
            "choices": q.choices,
            "duration": round(len(audio) / SAMPLE_RATE, 3),
            "voice": q.voice.label,
            "source": SOURCE,
        }

    # Binary backend: each synthesis is a subprocess, so threads overlap them. The library
    # backend serialises internally; threads then only overlap resampling and file writes.
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(render, questions))

    write_jsonl_atomic(manifest, rows)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=48, help="number of questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("auto", "binary", "library"), default="auto")
    args = parser.parse_args(argv)
    manifest = make_tiny_spoken_set(args.out_dir, args.n, args.seed, args.backend)
    print(manifest)


if __name__ == "__main__":
    main()
