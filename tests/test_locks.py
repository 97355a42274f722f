"""One writer per folder: every command that writes a folder (or a file) holds its lock for its whole
life, a second writer is refused with one line naming the holder's PID, and a SIGKILLed holder
leaves no stuck lock.

The holder in the table is a separate process holding the lock as the commands do (cordlite.lock):
flock conflicts between processes, not within one. `test_two_trainings_of_one_folder` runs the
real thing: a training in a subprocess and a second one started while it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import one_error_line, snapshot, tiny_raw

from cordlite.lock import LockError, lock_path, writer_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom cordlite.lock import writer_lock\n"
        "with writer_lock(sys.argv[1], 'the test holder'):\n    print('held', flush=True)\n    time.sleep(600)\n")


def _hold(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    target = tmp_path / "run"
    holder = _hold(target)
    try:
        with pytest.raises(LockError) as refused:
            with writer_lock(target, "cordlite train"):
                pass
        assert f"{target} is being written by another process (PID {holder.pid} on " in str(refused.value)
        assert "the test holder, since" in str(refused.value)
    finally:
        _kill(holder)
    assert lock_path(target).exists()  # SIGKILL: the file stays, the lock does not
    with writer_lock(target, "cordlite train"):  # taken over at once
        assert f"PID {os.getpid()} on" in lock_path(target).read_text()
    assert not lock_path(target).exists()  # a clean exit removes it


def test_the_same_process_may_take_its_own_lock_again(tmp_path):
    with writer_lock(tmp_path / "suite", "cordlite testbed ablate"):
        with writer_lock(tmp_path / "suite", "cordlite train"):  # a suite training in-process
            pass
        assert lock_path(tmp_path / "suite").exists()  # still held by the outer block
    assert not lock_path(tmp_path / "suite").exists()


def _commands(tmp: Path, tiny_model_dir: Path, tiny_manifest: Path, run: Path) -> dict[str, tuple[Path, list[str]]]:
    """command -> (the folder or file it writes, its arguments)."""
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw(tiny_model_dir, tiny_manifest, tmp / "train_out")))
    questions = tmp / "questions.jsonl"
    questions.write_text(json.dumps({"id": "q1", "question": "What is two plus two?", "answer": "4"}) + "\n")
    pairs = tmp / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": "2 + 2?", "answer_a": "4", "answer_b": "four", "label": True}) + "\n")
    m = str(tiny_manifest)
    return {
        "train": (tmp / "train_out", ["train", str(recipe)]),
        "merge": (tmp / "merged", ["merge", str(run), "--out", str(tmp / "merged"), "--check-items", "0"]),
        "eval": (tmp / "eval", ["eval", m, "--out", str(tmp / "eval"), "--model", str(tiny_model_dir)]),
        "diagnose": (tmp / "diag", ["diagnose", m, "--out", str(tmp / "diag"), "--model", str(tiny_model_dir)]),
        "infer": (tmp / "answers.jsonl", ["infer", "--model", str(tiny_model_dir), "--manifest", m, "--out",
                                          str(tmp / "answers.jsonl")]),
        "data tts": (tmp / "spoken", ["data", "tts", "-i", str(questions), "-o", str(tmp / "spoken"), "--no-progress"]),
        "testbed build": (tmp / "testbed", ["testbed", "build", str(tmp / "testbed"), "--toy", "--quiet"]),
        "testbed ablate": (tmp / "suite", ["testbed", "ablate", str(REPO / "recipes" / "suites" /
                                                                   "testbed_scratch_ablation.yaml"),
                                           "--out", str(tmp / "suite")]),
        "judge-check": (tmp / "jc", ["judge-check", str(pairs), "--mode", "rules", "--out", str(tmp / "jc")]),
        "tiny-model": (tmp / "tm", ["tiny-model", str(tmp / "tm")]),
        "tiny-data": (tmp / "td", ["tiny-data", str(tmp / "td"), "--n", "2"]),
    }


COMMANDS = ["train", "merge", "eval", "diagnose", "infer", "data tts", "testbed build", "testbed ablate", "judge-check",
            "tiny-model", "tiny-data"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_writing_command_refuses_a_second_writer_in_one_line(command, tiny_model_dir, tiny_manifest, tiny_run,
                                                                   tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cordlite.cli import main

    monkeypatch.chdir(REPO)  # the shipped suite names its testbed and recipe relative to the repository
    target, args = _commands(tmp_path, tiny_model_dir, tiny_manifest, tiny_run[1])[command]
    target.mkdir() if target.suffix == "" else target.write_text('{"id": "kept", "answer": "an earlier answer"}\n')
    (target / "kept.txt").write_text("an earlier result\n") if target.is_dir() else None
    before = snapshot(tmp_path)
    holder = _hold(target)
    try:
        result = CliRunner().invoke(main, args)
    finally:
        _kill(holder)
    assert result.exit_code == 1, result.output
    line = one_error_line(result.output)
    assert f"is being written by another process (PID {holder.pid} on " in line, line
    assert "wait for it to finish or stop it, or " in line
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing the first writer has was touched
    assert set(after) - set(before) <= {".answers.jsonl.lock", f".{target.name}.lock"}  # the killed holder's file


def test_two_trainings_of_one_folder(tiny_model_dir, tiny_manifest, tmp_path):
    """The first runs to its end with every row; the second, started while it runs, is refused."""
    from click.testing import CliRunner

    from cordlite.cli import main

    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw(tiny_model_dir, tiny_manifest, out, steps=4)))
    first = subprocess.Popen([sys.executable, "-m", "cordlite", "train", str(recipe)], cwd=tmp_path, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not lock_path(out).exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert lock_path(out).exists(), first.communicate()
    second = CliRunner().invoke(main, ["train", str(recipe)])
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert second.exit_code == 1
    assert f"(PID {first.pid} on " in one_error_line(second.output)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert json.loads((out / "adapter" / "cordlite_adapter.json").read_text())["steps"] == 4
    assert not lock_path(out).exists()
