"""`cordlite eval`'s answering, the fast audio view beside the former one, in one run on one manifest.

    python -m benchmarks.eval_speed --manifest cache/testbed/data/test.jsonl --model cache/testbed/model \
        --instruction "Answer step by step." --max-new-tokens 48 [--threads 2] [--out benchmarks/results/eval_speed.json]

former: the audio view's features handed to generate() (the encoder on every clip's full 30 s window,
        the prompt's logits over the whole vocabulary), 8 questions a batch (the former default);
fast:   cordlite.eval.evaluate.audio_prompt: the encoder once per clip on its own length, the prompt
        read once by cordlite's prefill, its keys and values kept once; 32 questions a batch.
Both answer every item greedily from its audio and from its text, with the same model loaded once;
the answers are compared token for token. The judge is left out (the same in both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def _run(net, processor, examples, s, tokens, batch_size: int, embed_audio: bool) -> tuple[float, dict]:
    from cordlite.data import AudioCache, encode_views
    from cordlite.eval.evaluate import _answer_batch

    answers, cache = {}, AudioCache()
    t0 = time.perf_counter()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        views = encode_views(processor, chunk, cache, s.instruction, s.system_prompt)
        out = _answer_batch(net, processor, views, s, tokens, embed_audio=embed_audio)
        for m in ("audio", "text"):
            answers.update(((m, chunk[i].id), text) for i, text in zip(out[m][0], out[m][1]))
    return time.perf_counter() - t0, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--instruction", default="")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/eval_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cordlite.data import read_manifest
    from cordlite.deploy.loading import load_model
    from cordlite.eval.evaluate import EvalSettings
    from cordlite.models.tokens import audio_special_token_ids, end_token_ids

    examples = read_manifest(args.manifest)[: args.limit]
    net, processor = load_model(args.model, "cpu", "float32")
    tok = processor.tokenizer
    end = end_token_ids(net, tok)
    tokens = (end, tok.pad_token_id if tok.pad_token_id is not None else end[-1], audio_special_token_ids(tok))
    s = EvalSettings(manifest=args.manifest, out="unused", instruction=args.instruction,
                     max_new_tokens=args.max_new_tokens)
    load0 = os.getloadavg()[0]
    fast_s, fast = _run(net, processor, examples, s, tokens, 32, True)
    former_s, former = _run(net, processor, examples, s, tokens, 8, False)
    same = sum(fast[k] == former.get(k) for k in fast)
    result = {"manifest": args.manifest, "model": args.model, "items": len(examples), "answers": len(fast),
              "former_seconds": round(former_s, 1), "fast_seconds": round(fast_s, 1),
              "speedup": round(former_s / fast_s, 2), "identical_answers": same,
              "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "load_average_start": load0, "load_average_end": os.getloadavg()[0]}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
