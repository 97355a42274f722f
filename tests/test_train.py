"""End to end on the tiny Qwen2-Audio: one CORD step, NF4 on CPU, the CLI run, SIGTERM + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cordlite.data import AudioCache, ManifestError, encode_views, read_manifest
from cordlite.models.sampling import repeat_rows
from cordlite.objective import step as step_module
from cordlite.objective.logprobs import completion_hidden, full_logprobs
from cordlite.objective.step import ReferenceStore, Tokens, collect, compute_loss
from cordlite.recipe import recipe_from_dict
from cordlite.train.trainer import METRIC_KEYS, train

REPO = Path(__file__).resolve().parents[1]


def tiny_raw(model_dir: Path, manifest: Path, out: Path, quant: str = "none") -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "quantization": {"mode": quant},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train_manifest": str(manifest), "instruction": "Answer the question."},
        "rollout": {"max_new_tokens": 6, "group_size": 2},
        "loss": {"top_k": 3},
        "optim": {"lr": 1e-2},
        "train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "seed": 0},
        "output": {"dir": str(out), "progress": False, "save_every": 100},
    }


def _run_one_step(recipe, manifest, model_dir, quant, monkeypatch, perturb_b: bool, plain_base, lora_student,
                  text_view_logprobs):
    # A fresh adapter has lora_B = 0, so lora_A's gradient is exactly 0 on the first step;
    # start from a non-zero B (as after any trained step) so every LoRA tensor must move.
    model, processor, rt = lora_student(recipe, 0.05 if perturb_b else 0.0)
    # A random tiny model never matches its reference answer; alternate rewards so the GRPO
    # term has non-zero advantages and its gradient path is exercised too.
    monkeypatch.setattr(step_module, "rule_rewards", lambda texts, *a, **k: [float(i % 2) for i in range(len(texts))])
    views = encode_views(processor, read_manifest(manifest)[:2], AudioCache(), "Answer the question.")
    tokens = Tokens.of(model, processor.tokenizer)
    plain = plain_base(model_dir, quant)

    probe_ids = torch.randint(0, 900, (2, 5))
    probe_mask = torch.ones(2, 5, dtype=torch.long)
    base_lp = text_view_logprobs(plain, views, probe_ids, probe_mask, False)
    assert torch.allclose(text_view_logprobs(model, views, probe_ids, probe_mask, True), base_lp, atol=1e-5)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=recipe.optim.lr, weight_decay=0.0)
    c = collect(model, processor.tokenizer, views, recipe, rt, tokens, ReferenceStore(None))
    loss, stats = compute_loss(model, c, recipe, rt)
    loss.backward()
    opt.step()

    after_lp = text_view_logprobs(model, views, probe_ids, probe_mask, True)
    assert torch.allclose(after_lp, base_lp, atol=1e-5), "the teacher must stay the plain base after training"
    # ...while the student (adapters on) has moved away from it
    assert not torch.allclose(text_view_logprobs(model, views, probe_ids, probe_mask, False), base_lp, atol=1e-5)
    changed = {n: not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()}
    return model, changed, stats


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_one_step_moves_every_lora_param_and_no_base_param(quant, tiny_model_dir, tiny_manifest, tmp_path, monkeypatch,
                                                           plain_base, lora_student, text_view_logprobs):
    recipe = recipe_from_dict(tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", quant))
    model, changed, stats = _run_one_step(recipe, tiny_manifest, tiny_model_dir, quant, monkeypatch, True, plain_base,
                                          lora_student, text_view_logprobs)
    lora = [n for n in changed if "lora_" in n]
    base = [n for n in changed if "lora_" not in n]
    assert lora and base
    assert all(changed[n] for n in lora), [n for n in lora if not changed[n]]
    assert not any(changed[n] for n in base), [n for n in base if changed[n]]
    assert stats["tok_loss"] > 0 and stats["seq_loss"] != 0 and stats["adv_abs_mean"] == 0.5
    if quant == "nf4":
        import bitsandbytes as bnb

        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        assert n4 == 14  # q,k,v,o,gate,up,down x 2 layers: the language model only
        audio = model.get_base_model().model.audio_tower
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in audio.modules())


def test_fresh_adapter_first_step_moves_every_lora_b(tiny_model_dir, tiny_manifest, tmp_path, monkeypatch, plain_base,
                                                     lora_student, text_view_logprobs):
    recipe = recipe_from_dict(tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run"))
    _, changed, _ = _run_one_step(recipe, tiny_manifest, tiny_model_dir, "none", monkeypatch, False, plain_base,
                                 lora_student, text_view_logprobs)
    assert all(changed[n] for n in changed if "lora_B" in n)
    assert not any(changed[n] for n in changed if "lora_" not in n)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_train_writes_metrics_checkpoints_and_a_peft_adapter(tiny_model_dir, tiny_manifest, tmp_path, plain_base):
    from click.testing import CliRunner
    from peft import PeftModel

    from cordlite.cli import main

    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", "nf4")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["train", str(recipe_path), "--set", "train.max_steps=3",
                                       "--set", "output.save_every=2"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(METRIC_KEYS) <= set(r)
        assert r["tokens_generated"] > 0 and r["step_seconds"] > 0 and r["weight_max"] >= 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["quantization"]["mode"] == "nf4"
    meta = json.loads((run / "adapter" / "cordlite_adapter.json").read_text())
    assert meta["base_model"] == str(tiny_model_dir) and meta["steps"] == 3
    # Every file and folder has the modes an ordinary write gives under the umask (safetensors alone
    # would make its files 0600, unreadable to the other users of a shared run folder).
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in [run, *run.rglob("*")]}
    assert {k: oct(m) for k, m in modes.items() if m != (0o777 if (run / k).is_dir() else 0o666) & ~mask} == {}

    from cordlite.models.lora import peft_wrapping

    with peft_wrapping():  # peft's FutureWarning about a transformers property: not this test's subject
        peft_model = PeftModel.from_pretrained(plain_base(tiny_model_dir, "none"), run / "adapter")
    loaded = {n: p for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert loaded and any(p.abs().sum() > 0 for p in loaded.values())

    again = CliRunner().invoke(main, ["train", str(recipe_path)])
    assert again.exit_code == 1 and "--resume" in again.output


def test_sigterm_saves_a_checkpoint_and_resume_replays_the_same_steps(tiny_model_dir, tiny_manifest, tmp_path):
    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "killed")
    raw["train"].update(max_steps=200, batch_size=2, micro_batch_size=1)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    # The same torch thread count as the in-process runs below: a different count changes the order
    # of float reductions, and the replayed losses are compared closely.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "cordlite", "train", str(recipe_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "--resume" in out
    done = len(_metrics(tmp_path / "killed"))
    assert 3 <= done < 200
    assert (tmp_path / "killed" / "checkpoints" / f"step_{done:06d}" / "state.json").is_file()

    total = done + 2
    resumed = recipe_from_dict(raw, overrides=[f"train.max_steps={total}"])
    train(resumed, resume=True)
    unbroken = recipe_from_dict(raw, overrides=[f"train.max_steps={total}", f"output.dir={tmp_path / 'unbroken'}"])
    train(unbroken)
    a, b = _metrics(tmp_path / "killed"), _metrics(tmp_path / "unbroken")
    assert [r["step"] for r in a] == list(range(1, total + 1))
    assert [r["prompt_ids"] for r in a] == [r["prompt_ids"] for r in b]
    for ra, rb in zip(a, b):
        # abs 1e-5: the loss is a difference of terms of order 1 and can sit near 0 (0.0137 at step 4)
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-5), ra["step"]


def test_a_second_sigterm_stops_at_once_and_says_what_is_kept(tiny_model_dir, tiny_manifest, tmp_path, monkeypatch,
                                                             capsys):
    """The handler: a first signal asks for a stop at a safe point, a second one stops at once
    (StopNow, not click's bare "Aborted!"). The trainer then exits 128 + signum, naming the last
    checkpoint; the next start resumes from it. The second signal is raised in the rollout of step
    3 here (signals do not queue, so two real ones sent at once arrive as one)."""
    from cordlite.train import optimizer_step
    from cordlite.train import trainer as trainer_module

    handler = trainer_module._Signals(trainer_module.init_distributed())
    handler._handle(signal.SIGTERM, None)
    with pytest.raises(trainer_module.StopNow):
        handler._handle(signal.SIGTERM, None)

    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run")
    raw["train"].update(max_steps=4, batch_size=1, micro_batch_size=1)
    raw["output"].update(save_every=1)
    real_collect, calls = optimizer_step.collect, []

    def collect_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise trainer_module.StopNow(signal.SIGTERM)
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(optimizer_step, "collect", collect_then_signal)
    with pytest.raises(SystemExit) as stop:
        train(recipe_from_dict(raw))
    assert stop.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "second SIGTERM: stopped at once without saving; the last checkpoint is" in err
    assert "step_000002 (steps after it are lost); continue with --resume" in err
    monkeypatch.setattr(optimizer_step, "collect", real_collect)
    train(recipe_from_dict(raw), resume=True)
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_references_are_generated_ahead_in_one_call(tiny_model_dir, tiny_manifest, tmp_path):
    """The first step generates the text-view references of its whole block of steps (64 prompts: 32
    steps of 2; the tiny set's 8) in one call, so the next steps generate none; each is written once."""
    from cordlite.train.optimizer_step import REFERENCE_BATCH

    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run")
    raw["train"].update(max_steps=3)
    raw["optim"] = {"lr": 1e-2, "warmup_steps": 0}
    train(recipe_from_dict(raw))
    rows = _metrics(tmp_path / "run")
    refs = [json.loads(line) for line in (tmp_path / "run" / "reference_answers.jsonl").read_text().splitlines()]
    n_examples = len(read_manifest(tiny_manifest))
    assert len(refs) == len({r["id"] for r in refs}) == min(REFERENCE_BATCH, n_examples)
    assert rows[0]["references_s"] > 0 and rows[0]["reference_calls"] == 1
    assert [r["references_s"] for r in rows[1:]] == [0.0, 0.0] and [r["reference_tokens"] for r in rows] == [0.0] * 3


def test_training_refuses_audio_only_rows(tiny_model_dir, tiny_manifest, tmp_path):
    from cordlite.train.distributed import Dist
    from cordlite.train.trainer import TrainError, prepare_data

    rows = [json.loads(l) for l in tiny_manifest.read_text().splitlines()]
    rows[1]["text_view"] = False
    for r in rows:
        r["audio_path"] = str(tiny_manifest.parent / r["audio_path"])
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_from_dict(tiny_raw(tiny_model_dir, manifest, tmp_path / "run"))
    with pytest.raises(TrainError, match=rf"text_view: false \(e.g. '{rows[1]['id']}'\)"):
        prepare_data(recipe, Dist())


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_an_output_dir_in_the_way_of_a_file_is_one_line(tiny_model_dir, tiny_manifest, tmp_path, monkeypatch, where):
    from click.testing import CliRunner

    from cordlite.cli import main

    blocker = tmp_path / "taken"
    blocker.write_text("someone's notes\n")
    out = blocker if where == "is_a_file" else blocker / "run"
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_raw(tiny_model_dir, tiny_manifest, out)))
    monkeypatch.delenv("CORDLITE_DEBUG", raising=False)
    result = CliRunner().invoke(main, ["train", str(recipe_path)])
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {blocker}: ")  # the file in the way, named
    assert "a file is in the way" in line and "CORDLITE_DEBUG=1" in line
    assert "Traceback" not in result.output
    assert blocker.read_text() == "someone's notes\n"  # nothing already written is changed
    monkeypatch.setenv("CORDLITE_DEBUG", "1")  # the traceback on request
    debug = CliRunner().invoke(main, ["train", str(recipe_path)])
    assert isinstance(debug.exception, OSError)


def test_os_error_messages_name_the_path_and_the_fix():
    import errno

    from cordlite.cli_common import os_error_message

    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/data/run")) == (
        "/data/run: Permission denied; not allowed: choose a directory you can write to, or fix its permissions")
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")) == (
        "/data/run/metrics.jsonl: No space left on device; the disk is full: free some space and run the command "
        "again (training: with --resume)")
    assert os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run")).endswith(
        "choose another directory")
    assert os_error_message(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == (
        "/a -> /b: Invalid cross-device link")


def test_an_encoding_error_no_reader_named_is_one_line(monkeypatch):
    import click
    from click.testing import CliRunner

    from cordlite.cli_common import Group

    @click.group(cls=Group)
    def cli():
        pass

    @cli.command()
    def read():
        b"caf\xe9".decode("utf-8")

    monkeypatch.delenv("CORDLITE_DEBUG", raising=False)
    res = CliRunner().invoke(cli, ["read"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("error: a file given is not UTF-8 text (unexpected end of data at byte 3: 0xe9); "
                                 "save it as UTF-8")


def test_a_late_bad_clip_stops_the_run_before_the_first_step(tiny_model_dir, tiny_manifest, tmp_path, capsys):
    """Every clip's header is read before the model loads: a 45 s clip on the last row and an
    unreadable one are both reported at once, nothing is written; 8 kHz stereo is noted once."""
    import numpy as np
    import soundfile as sf

    rows = [json.loads(line) for line in tiny_manifest.read_text().splitlines() if line.strip()]
    for r in rows:
        r["audio_path"] = str((tiny_manifest.parent / r["audio_path"]).resolve())
    sf.write(tmp_path / "long.wav", np.zeros(45 * 16000, dtype=np.float32), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # a header cut short
    sf.write(tmp_path / "stereo8k.wav", np.full((8000, 2), 0.1, dtype=np.float32), 8000)
    extra = [{**rows[0], "id": "late-long", "audio_path": str(tmp_path / "long.wav")},
             {**rows[0], "id": "late-broken", "audio_path": str(tmp_path / "broken.wav")}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    raw = tiny_raw(tiny_model_dir, manifest, tmp_path / "run")
    with pytest.raises(ManifestError) as info:
        train(recipe_from_dict(raw))
    msg = str(info.value)
    assert msg.startswith(f"{manifest}: 2 clip(s) cannot be used; nothing was run:")
    assert "row 'late-long': " in msg and "is 45.0 s, longer than data.max_audio_seconds (30.0 s)" in msg
    assert "row 'late-broken': " in msg and "cannot be read" in msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows
                                + [{**rows[0], "id": "late-8k", "audio_path": str(tmp_path / "stereo8k.wav")}]))
    train(recipe_from_dict(raw, overrides=["train.max_steps=1"]))
    err = capsys.readouterr().err
    assert err.count("1 clip(s) not at 16 kHz: resampled as read (e.g. 'late-8k')") == 1
    assert err.count("1 clip(s) not mono: channels averaged as read (e.g. 'late-8k')") == 1


def test_kl_direction_forward_trains_the_forward_kl_on_the_students_rollouts(tiny_model_dir, tiny_manifest, tmp_path,
                                                                            lora_student):
    """loss.kl_direction: forward keeps CORD's rollouts (the student's own) and weights, and swaps the
    per-token divergence for KL(teacher || student): on one collected batch, kl_mean is the masked
    mean of each direction computed by hand from the teacher's and the student's log-probs."""
    from cordlite.objective.losses import forward_kl_per_token, reverse_kl_per_token

    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run")
    raw["loss"].update(lambda_seq=0.0)
    recipe = recipe_from_dict(raw)
    model, processor, rt = lora_student(recipe)  # the student differs from the teacher
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.")
    c = collect(model, processor.tokenizer, views, recipe, rt, Tokens.of(model, processor.tokenizer),
                ReferenceStore(None))
    with torch.no_grad():
        audio = repeat_rows(views.audio, c.source)
        student = full_logprobs(model, completion_hidden(model, audio, c.completion_ids, c.completion_mask), 4)
    valid = c.completion_mask.bool()
    by_hand = {"reverse": reverse_kl_per_token(student, c.teacher_lp)[valid].mean().item(),
               "forward": forward_kl_per_token(student, c.teacher_lp)[valid].mean().item()}
    # near-uniform random distributions make the two directions close: they still differ by far more
    # than the tolerance the step's values are checked to
    assert abs(by_hand["reverse"] - by_hand["forward"]) > 1e-4 * by_hand["reverse"]
    for direction in ("reverse", "forward"):
        r = recipe_from_dict({**raw, "loss": {**raw["loss"], "kl_direction": direction}})
        _, stats = compute_loss(model, c, r, rt)
        assert stats["kl_mean"] == pytest.approx(by_hand[direction], rel=1e-5), direction
    with pytest.raises(Exception, match="loss.kl_direction: 'forward' applies to loss.objective: cord only"):
        recipe_from_dict({**raw, "loss": {"objective": "sft", "lambda_seq": 0.0, "kl_direction": "forward"}})
