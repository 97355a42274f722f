"""Tests for cordlite.config (typed recipes, overrides, loud errors) and the config side of the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cordlite.cli import main
from cordlite.config import Recipe
from cordlite.recipe import dump_recipe, load_recipe, parse_override, recipe_from_dict
from cordlite.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
TINY = ROOT / "recipes" / "tiny_cpu.yaml"


def _base(**sections) -> dict:
    """A minimal valid recipe mapping (with check_paths=False), with sections merged in."""
    raw: dict = {
        "model": {"name_or_path": "Qwen/Qwen2-Audio-7B-Instruct"},
        "data": {"train_manifest": "data/manifest.jsonl"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def _problems(raw: dict, overrides=(), check_paths: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw, "test-recipe", overrides, check_paths=check_paths)
    return info.value.problems


def _one_with(problems: list[str], *needles: str) -> str:
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, f"expected exactly one problem containing {needles}, got {problems}"
    return hits[0]


# --------------------------------------------------------------------------- shipped recipes


def test_there_are_recipes():
    assert len(RECIPES) >= 2, RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_round_trips(path: Path, tmp_path: Path):
    recipe = load_recipe(path, check_paths=False)
    assert isinstance(recipe, Recipe)
    text = dump_recipe(recipe)
    # Through a mapping ...
    assert recipe_from_dict(yaml.safe_load(text), check_paths=False) == recipe
    # ... and through a file.
    out = tmp_path / "dumped.yaml"
    out.write_text(text)
    assert load_recipe(out, check_paths=False) == recipe
    # Dumping is a fixed point.
    assert dump_recipe(load_recipe(out, check_paths=False)) == text


def test_default_recipe_round_trips():
    recipe = recipe_from_dict(_base(), check_paths=False)
    assert recipe_from_dict(yaml.safe_load(dump_recipe(recipe)), check_paths=False) == recipe


def test_recipe_values_are_read():
    tiny = load_recipe(TINY, check_paths=False)
    assert tiny.model.device == "cpu"
    assert tiny.lora.r == 8
    assert tiny.optim.lr == pytest.approx(1e-3)
    assert tiny.train.batch_size == 2
    # Unset fields keep their defaults.
    assert tiny.loss.lambda_tok == 1.0
    assert tiny.judge.mode == "rules"


# --------------------------------------------------------------------------- overrides


def test_parse_override_reads_yaml_values():
    assert parse_override("train.max_steps=10") == (["train", "max_steps"], 10)
    assert parse_override("output.dir=runs/x") == (["output", "dir"], "runs/x")
    assert parse_override("lora.target_modules=[q_proj,v_proj]") == (["lora", "target_modules"], ["q_proj", "v_proj"])
    assert parse_override("data.system_prompt=") == (["data", "system_prompt"], "")


def test_parse_override_without_equals_is_an_error():
    with pytest.raises(ConfigError) as info:
        parse_override("train.max_steps")
    assert "key=value" in info.value.problems[0]


def test_overrides_take_effect_with_types():
    recipe = load_recipe(
        TINY,
        ["train.max_steps=10", "output.dir=runs/x", "loss.alpha=1.5", "lora.target_modules=[q_proj,v_proj]"],
        check_paths=False,
    )
    assert recipe.train.max_steps == 10 and type(recipe.train.max_steps) is int
    assert recipe.output.dir == "runs/x"
    assert recipe.loss.alpha == 1.5 and type(recipe.loss.alpha) is float
    assert recipe.lora.target_modules == ("q_proj", "v_proj")
    assert isinstance(recipe.lora.target_modules, tuple)
    # Everything else is untouched.
    assert recipe.lora.r == 8
    assert recipe.train.batch_size == 2


def test_later_override_wins():
    recipe = load_recipe(TINY, ["train.max_steps=10", "train.max_steps=11"], check_paths=False)
    assert recipe.train.max_steps == 11


def test_override_can_create_a_section():
    recipe = recipe_from_dict({"model": {"name_or_path": "Qwen/Qwen2-Audio-7B-Instruct"}},
                              overrides=["data.train_manifest=d/manifest.jsonl"], check_paths=False)
    assert recipe.data.train_manifest == "d/manifest.jsonl"


@pytest.mark.parametrize("text, expected", [("1", 1.0), ("3e-5", 3e-5), ("3.0e-5", 3e-5), ("0.25", 0.25)])
def test_float_field_accepts_int_and_exponent_strings(text: str, expected: float):
    recipe = recipe_from_dict(_base(), overrides=[f"optim.lr={text}"], check_paths=False)
    assert type(recipe.optim.lr) is float
    assert recipe.optim.lr == pytest.approx(expected)


def test_float_field_from_yaml_file(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: Qwen/Qwen2-Audio-7B-Instruct}\n"
                    "data: {train_manifest: d/manifest.jsonl}\n"
                    "optim: {lr: 3e-5, max_grad_norm: 2}\n")
    recipe = load_recipe(path, check_paths=False)
    assert recipe.optim.lr == pytest.approx(3e-5) and type(recipe.optim.lr) is float
    assert recipe.optim.max_grad_norm == 2.0 and type(recipe.optim.max_grad_norm) is float


@pytest.mark.parametrize("override, needle", [
    ("train.max_steps=2.5", "train.max_steps"),
    ("train.max_steps=true", "train.max_steps"),
    ("data.shuffle=1", "data.shuffle"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("output.dir=5", "output.dir"),
])
def test_wrong_override_types_are_errors(override: str, needle: str):
    problems = _problems(_base(), [override])
    _one_with(problems, needle)


@pytest.mark.parametrize("word", ["on", "off"])
def test_on_off_literal_without_quotes(word: str, tmp_path: Path):
    recipe = recipe_from_dict(_base(), overrides=[f"train.gradient_checkpointing={word}"], check_paths=False)
    assert recipe.train.gradient_checkpointing == word
    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: Qwen/Qwen2-Audio-7B-Instruct}\n"
                    "data: {train_manifest: d/manifest.jsonl}\n"
                    f"train: {{gradient_checkpointing: {word}}}\n")
    assert load_recipe(path, check_paths=False).train.gradient_checkpointing == word


def test_on_off_literal_quoted():
    recipe = recipe_from_dict(_base(), overrides=["train.gradient_checkpointing='off'"], check_paths=False)
    assert recipe.train.gradient_checkpointing == "off"


def test_override_unknown_key_is_reported():
    problems = _problems(_base(), ["train.max_stesp=10"])
    msg = _one_with(problems, "train.max_stesp")
    assert "did you mean 'max_steps'?" in msg


# --------------------------------------------------------------------------- loud, collected errors


def test_all_problems_in_one_error():
    raw = {
        "model": {"device": "cpu"},  # name_or_path missing
        "data": {"train_manifest": "d/manifest.jsonl"},
        "loss": {"alpah": 3.0},
        "train": {"max_steps": "ten"},
        "quantization": {"mode": "nf5"},
    }
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw, "bad.yaml", check_paths=False)
    err = info.value
    assert err.source == "bad.yaml"
    assert len(err.problems) == 4, err.problems

    typo = _one_with(err.problems, "loss.alpah")
    assert "did you mean 'alpha'?" in typo

    wrong_type = _one_with(err.problems, "train.max_steps")
    assert "'ten'" in wrong_type

    literal = _one_with(err.problems, "quantization.mode")
    assert "'nf5'" in literal
    assert "did you mean 'nf4'?" in literal

    _one_with(err.problems, "model.name_or_path", "required")

    # The message shows every problem too.
    text = str(err)
    assert text.startswith("bad.yaml: 4 problem(s)")
    for p in err.problems:
        assert p in text


def test_unknown_section_did_you_mean(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: Qwen/Qwen2-Audio-7B-Instruct}\n"
                    "data: {train_manifest: d/manifest.jsonl}\n"
                    "trian: {max_steps: 10}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, check_paths=False)
    msg = _one_with(info.value.problems, "trian")
    assert "did you mean 'train'?" in msg
    assert str(path) in str(info.value)


def test_unknown_key_without_close_match_lists_valid_keys():
    msg = _one_with(_problems(_base(judge={"zzzzzz": 1})), "judge.zzzzzz")
    assert "valid keys:" in msg and "number_tolerance" in msg


def test_section_must_be_a_mapping():
    raw = _base()
    raw["train"] = 5
    _one_with(_problems(raw), "train", "mapping")


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_bytes(b"model:\n  name_or_path: caf\xe9\n")  # latin-1
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 26\); save the recipe as UTF-8"):
        load_recipe(bad)


def test_a_field_that_failed_to_parse_is_not_reported_twice():
    # micro_batch_size "two" fails to parse; the divisibility check must not also fire on its default.
    problems = _problems(_base(train={"batch_size": 3, "micro_batch_size": "two"}))
    assert len(problems) == 1, problems
    _one_with(problems, "train.micro_batch_size", "'two'")


# --------------------------------------------------------------------------- impossible combinations


@pytest.mark.parametrize("sections, field_names", [
    ({"train": {"batch_size": 3, "micro_batch_size": 2}}, ["train.batch_size", "train.micro_batch_size"]),
    ({"loss": {"lambda_seq": 1.0}, "rollout": {"group_size": 1}}, ["rollout.group_size", "loss.lambda_seq"]),
    ({"loss": {"lambda_tok": 0.0, "lambda_seq": 0.0}}, ["loss.lambda_tok", "loss.lambda_seq"]),
    ({"loss": {"lambda_seq": 0.0}, "rollout": {"share_rollouts": True}}, ["rollout.share_rollouts", "loss.lambda_seq"]),
    ({"model": {"name_or_path": "Qwen/Qwen2-Audio-7B-Instruct", "family": "qwen9_audio"}},
     ["model.family", "qwen2_audio", "audioflamingo3"]),
    ({"data": {"frames": "f.safetensors"}, "lora": {"audio_encoder": True}}, ["data.frames", "lora.audio_encoder"]),
    ({"data": {"frames": "f.safetensors"}, "rollout": {"encode_audio_once": False}},
     ["data.frames", "rollout.encode_audio_once"]),
], ids=["batch-multiple", "grpo-group-1", "both-lambdas-0", "share-without-seq", "unknown-family",
        "frames-with-encoder-lora", "frames-without-encode-once"])
def test_impossible_combinations(sections: dict, field_names: list[str]):
    problems = _problems(_base(**sections))
    assert len(problems) == 1, problems
    for name in field_names:
        assert name in problems[0], (name, problems[0])


def test_possible_neighbours_of_the_impossible_combinations_are_fine():
    ok = [
        {"train": {"batch_size": 4, "micro_batch_size": 2}},
        {"loss": {"lambda_seq": 0.0}, "rollout": {"group_size": 1}},
        {"loss": {"lambda_tok": 0.0, "lambda_seq": 1.0}},
        {"loss": {"lambda_seq": 1.0}, "rollout": {"share_rollouts": True}},
        {"quantization": {"mode": "none", "skip_modules": []}},
        {"data": {"frames": "f.safetensors"}, "lora": {"audio_encoder": False}},
        {"lora": {"dropout": 0.1}, "loss": {"objective": "sft", "lambda_seq": 0.0}},  # off-policy: dropout allowed
        {"rollout": {"kv_budget_gb": 2.5}, "data": {"audio_cache_mb": 0}},
    ]
    for sections in ok:
        recipe_from_dict(_base(**sections), check_paths=False)


@pytest.mark.parametrize("sections, needle", [
    ({"lora": {"r": 0}}, "lora.r"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout"),
    ({"lora": {"dropout": 0.05}}, "CORD is on-policy"),  # the gradient pass must score the sampling policy
    ({"rollout": {"kv_budget_gb": 0}}, "rollout.kv_budget_gb"),
    ({"rollout": {"kv_budget_gb": float("inf")}}, "rollout.kv_budget_gb"),
    ({"data": {"audio_cache_mb": -1}}, "data.audio_cache_mb"),
    ({"model": {"device": "cpu"}, "train": {"mixed_precision": "fp16"}}, "train.mixed_precision"),
    ({"lora": {"target_modules": []}}, "lora.target_modules"),
    ({"data": {"max_audio_seconds": 31}}, "data.max_audio_seconds"),
    ({"rollout": {"top_p": 0}}, "rollout.top_p"),
    ({"optim": {"betas": [0.9, 1.0]}}, "optim.betas"),
    ({"optim": {"warmup_steps": 20}, "train": {"max_steps": 10}}, "optim.warmup_steps"),
    ({"model": {"device": "cpu"}, "train": {"mixed_precision": "bf16"}}, "train.mixed_precision"),
    ({"model": {"device": "cpu"}, "quantization": {"mode": "int8"}}, "quantization.mode"),
])
def test_range_checks_name_the_field(sections: dict, needle: str):
    _one_with(_problems(_base(**sections)), needle)


# --------------------------------------------------------------------------- paths


def test_missing_local_model_dir_is_an_error_with_check_paths(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    raw = _base(model={"name_or_path": "./nope/model"}, data={"train_manifest": str(manifest)})
    msg = _one_with(_problems(raw, check_paths=True), "model.name_or_path")
    assert "'./nope/model'" in msg and "does not exist" in msg
    # Without path checks it is accepted.
    assert recipe_from_dict(raw, check_paths=False).model.name_or_path == "./nope/model"
    # create_tiny_if_missing does not make it valid: the tiny model is built only at its own path.
    raw["model"]["create_tiny_if_missing"] = True
    msg = _one_with(_problems(raw, check_paths=True), "model.name_or_path")
    assert "does not exist" in msg and "cordlite tiny-model ./nope/model" in msg
    raw["model"]["name_or_path"] = "cache/tiny-qwen2audio"
    recipe_from_dict(raw, check_paths=True)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_a_typo_in_a_shipped_recipes_paths_is_an_error_naming_it(path: Path, tmp_path: Path, monkeypatch):
    """Every shipped recipe, its model and manifest paths mistyped: both named, nothing built (the tiny
    recipe's create_tiny_if_missing builds only at the tiny model's and tiny set's own paths)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()  # a folder named like a hub org: "cache/x" is a local path, mistyped
    raw = yaml.safe_load(path.read_text())
    problems = _problems(raw, ["model.name_or_path=cache/tiny-qwen2aduio", "data.train_manifest=cache/tiny-spoken/"
                               "manifest.jsnl", "data.frames=null"], check_paths=True)
    assert "'cache/tiny-qwen2aduio' does not exist" in _one_with(problems, "model.name_or_path")
    assert "'cache/tiny-spoken/manifest.jsnl' does not exist" in _one_with(problems, "data.train_manifest")
    # An existing directory that holds no checkpoint is reported, not filled with a random model.
    (tmp_path / "cache" / "empty").mkdir()
    problems = _problems(raw, ["model.name_or_path=cache/empty", "data.frames=null"], check_paths=True)
    assert "'cache/empty' holds no checkpoint (no config.json)" in _one_with(problems, "model.name_or_path")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["empty"] and not any((tmp_path / "cache" / "empty").iterdir())


def test_hub_id_is_accepted_without_network(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    raw = _base(model={"name_or_path": "Qwen/Qwen2-Audio-7B-Instruct"}, data={"train_manifest": str(manifest)})
    recipe = recipe_from_dict(raw, check_paths=True)
    assert recipe.model.name_or_path == "Qwen/Qwen2-Audio-7B-Instruct"


def test_missing_manifest_is_an_error_with_check_paths(tmp_path: Path):
    raw = _base(data={"train_manifest": str(tmp_path / "none" / "manifest.jsonl")})
    _one_with(_problems(raw, check_paths=True), "data.train_manifest", "does not exist")


def test_missing_frame_store_is_an_error_with_check_paths(tmp_path: Path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    raw = _base(data={"train_manifest": str(manifest), "frames": str(tmp_path / "frames" / "cord.safetensors")})
    msg = _one_with(_problems(raw, check_paths=True), "data.frames", "does not exist")
    assert "cordlite testbed frames" in msg


# --------------------------------------------------------------------------- CLI


BAD_RECIPE = """\
model:
  device: cpu
data:
  train_manifest: d/manifest.jsonl
  create_tiny_if_missing: true
loss:
  alpah: 3.0
train:
  max_steps: ten
quantization:
  mode: nf5
trian:
  seed: 1
"""


def test_cli_validate_bad_recipe_exits_2_with_every_problem(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_RECIPE)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    out = result.output
    assert "Traceback" not in out
    assert str(path) in out
    assert "6 problem(s)" in out
    for needle in ("loss.alpah", "did you mean 'alpha'?", "train.max_steps", "'ten'",
                   "quantization.mode", "'nf5'", "did you mean 'nf4'?",
                   "model.name_or_path", "trian", "did you mean 'train'?",
                   "data.train_manifest: 'd/manifest.jsonl' does not exist"):  # the tiny set is built only at its own path
        assert needle in out, needle


def test_cli_bad_override_exits_2(tmp_path: Path, monkeypatch):
    good = _write_good_tiny_recipe(tmp_path, monkeypatch)
    result = CliRunner().invoke(main, ["validate", str(good), "--set", "train.max_steps=ten"])
    assert result.exit_code == 2
    assert "train.max_steps" in result.output and "'ten'" in result.output
    assert "Traceback" not in result.output


def test_cli_validate_missing_file_exits_2(tmp_path: Path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "file not found" in result.output
    assert "Traceback" not in result.output


def _write_good_tiny_recipe(tmp_path: Path, monkeypatch) -> Path:
    """tiny_cpu.yaml with its cache paths under tmp_path (neither exists yet), run from tmp_path: the
    tiny model and set are built only at their own paths, relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(TINY.read_text())
    raw["model"]["name_or_path"] = str(tmp_path / "cache" / "tiny-qwen2audio")
    raw["data"]["train_manifest"] = str(tmp_path / "cache" / "tiny-spoken" / "manifest.jsonl")
    raw["output"]["dir"] = str(tmp_path / "runs")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_cli_validate_good_recipe_exits_0(tmp_path: Path, monkeypatch):
    path = _write_good_tiny_recipe(tmp_path, monkeypatch)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: ok" in result.output
    # validate only checks: it builds neither the tiny model nor the tiny set.
    assert not (tmp_path / "cache").exists()


def test_cli_show_prints_resolved_yaml_with_override():
    result = CliRunner().invoke(main, ["show", str(TINY), "--set", "train.max_steps=7",
                                       "--set", "output.dir=runs/shown"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["train"]["max_steps"] == 7
    assert shown["output"]["dir"] == "runs/shown"
    # Fully resolved: defaults not in the file are there as well.
    assert shown["judge"]["number_tolerance"] == pytest.approx(1e-6)
    assert set(shown) == {"model", "quantization", "lora", "data", "rollout", "loss", "judge",
                          "optim", "train", "output"}


def test_cli_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("train", "validate", "show"):
        assert command in result.output
    result = runner.invoke(main, ["validate", "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output


def test_unquoted_no_reads_as_the_literal_not_a_boolean():
    from cordlite.recipe import recipe_from_dict

    r = recipe_from_dict({"model": {"name_or_path": "Qwen/Qwen2-Audio-7B-Instruct"},
                          "data": {"train_manifest": "x/manifest.jsonl"}},
                         overrides=["train.mixed_precision=no"], check_paths=False)
    assert r.train.mixed_precision == "no"


def test_quiet_libraries_drops_only_the_named_notices(caplog):
    """The CLI silences the third-party notices a user cannot act on (bitsandbytes offering an
    optional hub kernel; transformers' per-load bars) and nothing else; --verbose keeps them. peft's
    FutureWarning is silenced around cordlite's peft calls only."""
    import logging
    import os
    import warnings

    from transformers.utils import logging as hf_logging

    from cordlite.cli_common import VERBOSE_ENV, _DropStart, quiet_libraries
    from cordlite.models.lora import peft_wrapping

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    kept_filters, kept_env = list(log.filters), os.environ.pop(VERBOSE_ENV, None)
    log.filters[:] = [f for f in kept_filters if not isinstance(f, _DropStart)]  # earlier CLI tests quieted it

    def emit(verbose: bool) -> list[str]:
        quiet_libraries(verbose)
        with caplog.at_level(logging.WARNING, logger=log.name):
            log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "no kernels")
            log.warning("CUDA is broken")
        return [r.getMessage() for r in caplog.records]

    try:
        assert emit(False) == ["CUDA is broken"]
        assert not hf_logging.is_progress_bar_enabled()
        quiet_libraries(False)  # a second call adds no second filter
        assert sum(isinstance(f, _DropStart) for f in log.filters) == 1
        log.filters[:] = [f for f in kept_filters if not isinstance(f, _DropStart)]
        hf_logging.enable_progress_bar()
        caplog.clear()
        assert len(emit(True)) == 2 and os.environ[VERBOSE_ENV] == "1"
        assert hf_logging.is_progress_bar_enabled()
    finally:
        log.filters[:] = kept_filters
        hf_logging.enable_progress_bar()
        os.environ.pop(VERBOSE_ENV, None)
        if kept_env is not None:
            os.environ[VERBOSE_ENV] = kept_env

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with peft_wrapping():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("this option is deprecated", FutureWarning)
    assert [str(w.message) for w in seen] == ["this option is deprecated"]
