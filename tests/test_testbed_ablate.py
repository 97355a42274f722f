"""The ablation suite's bookkeeping: suite-file errors, the table's math by hand, the plot file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordlite.testbed.suite import Method, Suite, SuiteError, load_suite
from cordlite.testbed.summary import plot_curves, summarize, table_markdown

REPO = Path(__file__).resolve().parents[1]


def _suite(**kw) -> Suite:
    base = dict(path="suite.yaml", testbed="tb", base_recipe="r.yaml", out="out", seeds=(0, 1, 2), steps=100,
                eval_every=50, jobs=1, control_lr=4e-3, control_warmup_steps=10,
                methods=(Method("cord", "CORD"),))
    return Suite(**{**base, **kw})


def _run(seed, audio, text):
    # curve at steps 50 and 100; the final point is the second
    return {"method": "cord", "seed": seed, "seconds": 10.0,
            "curve": [{"step": 50, "audio_acc": audio - 5, "text_acc": text, "gap": 0},
                      {"step": 100, "audio_acc": audio, "text_acc": text, "gap": text - audio}],
            "final": {"step": 100, "audio_acc": audio, "text_acc": text, "gap": text - audio}}


def test_summary_by_hand():
    base = {"step": 0, "text_acc": 80.0, "audio_acc": 40.0, "gap": 40.0, "n": 400}
    runs = [_run(0, 50.0, 80.0), _run(1, 60.0, 78.0), _run(2, 70.0, 82.0)]
    s = summarize(_suite(), base, runs)
    m = s["methods"][0]
    # paper gap = 80 - audio = 30, 20, 10; reduction = 1 - gap/40 = 25, 50, 75 %
    assert m["gap"]["values"] == [30.0, 20.0, 10.0] and m["gap"]["mean"] == 20.0 and m["gap"]["std"] == 10.0
    assert m["gap_reduction"]["values"] == [25.0, 50.0, 75.0] and m["gap_reduction"]["std"] == 25.0
    assert m["own_gap"]["values"] == [30.0, 18.0, 12.0] and m["own_gap"]["mean"] == 20.0
    assert m["text_change"]["values"] == [0.0, -2.0, 2.0]
    assert [p["step"] for p in m["curve"]] == [50, 100]
    assert m["curve"][0]["audio_acc"]["mean"] == 55.0 and m["curve"][0]["gap"]["mean"] == 25.0
    table = table_markdown(s)
    assert "| CORD | 60.0 ± 10.0 | 80.0 ± 2.0 | 20.0 ± 10.0 | 50.0% ± 25.0% | 20.0 ± 9.2 | +0.0 ± 2.0 |" in table


def test_zero_base_gap_gives_no_reduction(tmp_path):
    base = {"step": 0, "text_acc": 0.0, "audio_acc": 0.0, "gap": 0.0, "n": 8}
    s = summarize(_suite(seeds=(0,)), base, [_run(0, 0.0, 0.0)])
    assert s["methods"][0]["gap_reduction"] is None and "| n/a |" in table_markdown(s)
    plot_curves(s, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_suite_file_errors_name_every_field(tmp_path):
    bad = tmp_path / "suite.yaml"
    bad.write_text("testbed: nowhere\nbase_recipe: nowhere.yaml\nseeds: [0, x]\nsteps: ten\n"
                   "colour: red\nmethods:\n  - {name: a, kind: magic}\n  - {name: a}\n")
    with pytest.raises(SuiteError) as e:
        load_suite(bad)
    msg = str(e.value)
    for part in ("colour: unknown field", "seeds: [0, 'x']", "steps: 'ten'", "methods[0].kind: 'magic'",
                 "name 'a' is used twice", "base_recipe: nowhere.yaml does not exist"):
        assert part in msg, part
    assert str(bad) in msg


def test_shipped_suite_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_suite(REPO / "recipes" / "suites" / "testbed_scratch_ablation.yaml", out=str(tmp_path / "o"))
    assert [m.name for m in s.methods] == ["control", "sft", "forward_kl", "grpo", "grpo_uniform_kl", "cord"]
    assert len(s.seeds) == 3 and s.eval_steps()[-1] == s.steps


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_and_its_method_recipes_build(path, tmp_path, monkeypatch):
    """Each suite file parses, and every LoRA method's recipe (base recipe + overrides + budget)
    passes the recipe checks (paths aside: the testbed is built later)."""
    from cordlite.testbed.ablate import lora_recipe

    monkeypatch.chdir(REPO)
    s = load_suite(path, out=str(tmp_path / "o"))
    assert len(s.seeds) == 3 and s.eval_steps()[-1] == s.steps
    for m in s.methods:
        if m.kind == "lora":
            recipe = lora_recipe(s, m, s.seeds[0], tmp_path / m.name, check_paths=False)
            assert recipe.train.max_steps == s.steps
