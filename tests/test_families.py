"""Every model family cordlite runs, end to end on its tiny checkpoint (cordlite.models.tiny_families):
a CORD step that moves every LoRA tensor and no base tensor, with the teacher equal to a plainly
loaded base before and after (unquantised and NF4 on CPU); the merged export reloaded by plain
transformers in a fresh process answers greedily as base + adapter; `cordlite eval` and
`cordlite infer` and `cordlite diagnose` run; `cordlite show` names the family; a refused model type says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from cordlite.cli import main as cli
from cordlite.data import AudioCache, encode_views, read_manifest
from cordlite.models.families import FAMILIES, FamilyError, family_for_type, family_of
from cordlite.models.load import load_base
from cordlite.models.tiny_families import TINY_FAMILIES, ensure_tiny
from cordlite.objective import step as step_module
from cordlite.objective.step import ReferenceStore, Tokens, collect, compute_loss
from cordlite.recipe import recipe_from_dict, recipe_to_dict

INSTRUCTION = "Answer the question."
GREEDY_TOKENS = 6


@pytest.fixture(scope="session")
def family_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Each family's tiny checkpoint, made by `cordlite tiny-model DIR --family NAME` (Qwen2-Audio's is
    the session's tiny model); a second call reuses a finished one."""
    root = tmp_path_factory.mktemp("families")
    dirs = {"qwen2_audio": tiny_model_dir}
    for f in TINY_FAMILIES[1:]:
        res = CliRunner().invoke(cli, ["tiny-model", str(root / f), "--family", f])
        assert res.exit_code == 0 and res.output.strip() == f"tiny {f} in {root / f}", res.output
        stamp = (root / f / "config.json").stat().st_mtime_ns
        assert ensure_tiny(f, root / f) == root / f and (root / f / "config.json").stat().st_mtime_ns == stamp
        dirs[f] = root / f
    return dirs


def _raw(model_dir: Path, manifest: Path, out: Path, quant: str = "none", steps: int = 1) -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "quantization": {"mode": quant},
        # every side of the adapter: the language model, the projector and the audio encoder
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "projector": True, "audio_encoder": True},
        "data": {"train_manifest": str(manifest), "instruction": INSTRUCTION},
        "rollout": {"max_new_tokens": 6, "group_size": 2},
        "loss": {"top_k": 3},
        "optim": {"lr": 1e-2},
        "train": {"max_steps": steps, "batch_size": 2, "micro_batch_size": 2, "seed": 0},
        "output": {"dir": str(out), "progress": False, "save_every": 100},
    }


@pytest.mark.parametrize("quant", ["none", "nf4"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cord_step_moves_every_lora_tensor_and_keeps_the_teacher_the_plain_base(family, quant, family_dirs, plain_base,
                                                                               lora_student, text_view_logprobs,
                                                                               tiny_manifest, tmp_path, monkeypatch):
    model_dir = family_dirs[family]
    recipe = recipe_from_dict(_raw(model_dir, tiny_manifest, tmp_path / "run", quant))
    # a fresh adapter has B = 0 and A gets no gradient: start from B != 0
    model, processor, rt = lora_student(recipe)
    base = model.get_base_model()
    assert family_of(model).name == family and type(base).__name__ == FAMILIES[family].model_class
    names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    fam = FAMILIES[family]
    for side in (fam.language_model.split(".")[-1], fam.tower.split(".")[-1], fam.projector.split(".")[-1]):
        assert any(f".{side}." in n for n in names), (side, names[:4])
    monkeypatch.setattr(step_module, "rule_rewards", lambda texts, *a, **k: [float(i % 2) for i in range(len(texts))])
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), INSTRUCTION)
    plain = plain_base(model_dir, quant)
    probe = torch.randint(0, 200, (2, 5))
    ones = torch.ones(2, 5, dtype=torch.long)
    base_lp = text_view_logprobs(plain, views, probe, ones, teacher=False)
    assert torch.allclose(text_view_logprobs(model, views, probe, ones, teacher=True), base_lp, atol=1e-5)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    c = collect(model, processor.tokenizer, views, recipe, rt, Tokens.of(model, processor.tokenizer), ReferenceStore(None))
    loss, stats = compute_loss(model, c, recipe, rt)
    loss.backward()
    opt.step()
    changed = {n: not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()}
    lora = [n for n in changed if "lora_" in n]
    assert lora and all(changed[n] for n in lora), [n for n in lora if not changed[n]]
    assert not any(changed[n] for n in changed if "lora_" not in n)
    assert stats["tok_loss"] > 0 and stats["adv_abs_mean"] == 0.5
    assert torch.allclose(text_view_logprobs(model, views, probe, ones, teacher=True), base_lp, atol=1e-5)
    assert not torch.allclose(text_view_logprobs(model, views, probe, ones, teacher=False), base_lp, atol=1e-5)
    if quant == "nf4":
        import bitsandbytes as bnb

        base = model.get_base_model()
        linears = [m for n, m in fam.lm(base).named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n]
        assert len(linears) >= 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)  # 7 a layer, 2+ layers
        for side in (fam.audio_tower(base), fam.audio_projector(base), base.lm_head):
            assert not any(isinstance(m, bnb.nn.Linear4bit) for m in side.modules())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_merge_reloads_in_a_fresh_process_and_eval_infer_diagnose_run(family, family_dirs, tiny_manifest, tmp_path,
                                                                  plain_base):
    """Train 2 steps with `cordlite train`, merge, reload the export with plain transformers in a
    fresh process: its greedy answers equal base + adapter's; then `cordlite eval`, `infer` and `diagnose`."""
    model_dir = family_dirs[family]
    run = tmp_path / "run"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_to_dict(recipe_from_dict(_raw(model_dir, tiny_manifest, run, steps=2)))))
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(recipe_file)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "merged"
    res = runner.invoke(cli, ["merge", str(run), "--out", str(out), "--dtype", "float32", "--check-items", "2",
                              "--check-tokens", str(GREEDY_TOKENS)])
    assert res.exit_code == 0, res.output
    export = json.loads((out / "cordlite_export.json").read_text())
    assert export["family"] == family and export["model_class"] == FAMILIES[family].model_class
    card = (out / "README.md").read_text()
    assert FAMILIES[family].model_class in card
    assert ("audio_text_processor" in card) == bool(FAMILIES[family].processor_class)  # the no-torchvision route
    check = json.loads((out / "merge_check.json").read_text())["merged"]
    assert check["identical_answers"] == check["items"] == 2

    clips = [str(ex.audio_path) for ex in read_manifest(tiny_manifest)[:2]]
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(out), json.dumps(clips)], capture_output=True,
                           text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    from cordlite.audio import load_audio
    from cordlite.deploy.infer import audio_prompt_inputs
    from cordlite.models.adapter import load_adapter
    from cordlite.models.families import forward_inputs
    from transformers import GenerationConfig

    base = plain_base(model_dir, "none")
    processor = FAMILIES[family].load_processor(str(model_dir))
    processor.tokenizer.padding_side = "left"
    model = load_adapter(base, run / "adapter").eval()
    inputs = forward_inputs(base, audio_prompt_inputs(processor, [load_audio(p) for p in clips], INSTRUCTION))
    gc = base.generation_config
    with torch.no_grad():
        ref = model.generate(**inputs, generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=GREEDY_TOKENS, eos_token_id=gc.eos_token_id, pad_token_id=gc.pad_token_id))
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == ref.tolist()

    res = runner.invoke(cli, ["eval", str(tiny_manifest), "--model", str(out), "--out", str(tmp_path / "eval"),
                              "--device", "cpu", "--max-new-tokens", "8", "--limit", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_items"] == 2 and 0 <= summary["audio_acc"] <= 100
    res = runner.invoke(cli, ["infer", "--model", str(out), "--audio", clips[0], "--max-new-tokens", "4",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["diagnose", str(tiny_manifest), "--model", str(out), "--out", str(tmp_path / "diag"),
                              "--limit", "2"])
    assert res.exit_code == 0, res.output
    diag = json.loads((tmp_path / "diag" / "diagnose.json").read_text())
    assert diag and (tmp_path / "diag" / "kl_histogram.png").is_file()


FRESH = """
import json, sys
import torch
from transformers import GenerationConfig
import transformers
from cordlite.audio import load_audio
from cordlite.deploy.infer import audio_prompt_inputs
from cordlite.models.families import family_named
out, clips = sys.argv[1], json.loads(sys.argv[2])
export = json.load(open(out + "/cordlite_export.json"))
model = getattr(transformers, export["model_class"]).from_pretrained(out).eval()
# AutoProcessor's; without torchvision the omni-modal processor classes are built from their audio and text parts
processor = family_named(export["family"]).load_processor(out)
processor.tokenizer.padding_side = "left"
inputs = audio_prompt_inputs(processor, [load_audio(p) for p in clips], export["prompt"]["instruction"])
inputs[family_named(export["family"]).feature_mask_key] = inputs.pop("feature_attention_mask")
gc = model.generation_config
with torch.no_grad():
    seq = model.generate(**inputs, generation_config=GenerationConfig(do_sample=False, max_new_tokens=%d,
                         eos_token_id=gc.eos_token_id, pad_token_id=gc.pad_token_id))
print(json.dumps(seq.tolist()))
""" % GREEDY_TOKENS


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_merged_audio_embeddings_give_the_models_own_logits(family, family_dirs, tiny_manifest, plain_base):
    """The audio view as cordlite builds it (the family's encoder on the start of the window, its
    projector, the frames written over the placeholders) gives the logits of the model's own forward
    on the processor's full-window features, for clips of different lengths in one batch."""
    from cordlite.models.audio_view import prompt_embeds
    from cordlite.models.families import decoder_kwargs, forward_inputs

    processor = FAMILIES[family].load_processor(str(family_dirs[family]))
    processor.tokenizer.padding_side = "left"
    views = encode_views(processor, read_manifest(tiny_manifest)[:3], AudioCache(), INSTRUCTION).audio
    assert len(set(views["feature_attention_mask"].sum(-1).tolist())) > 1  # clips of other lengths
    # float64 where the model's own forward runs in it (Gemma 4's conformer keeps float32 position tables)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        model = plain_base(family_dirs[family]).to(dtype)
        audio = dict(views, input_features=views["input_features"].to(dtype))
        try:
            with torch.no_grad():
                own = model(**forward_inputs(model, audio)).logits  # [3, P, V]
            break
        except RuntimeError:
            assert family == "gemma4" and dtype == torch.float64, family  # the one family known to need float32
    with torch.no_grad():
        merged = prompt_embeds(model, audio)
        mine = model(inputs_embeds=merged["inputs_embeds"], attention_mask=merged["attention_mask"],
                     **decoder_kwargs(model, merged["input_ids"])).logits  # Gemma 4: its per-layer inputs
    keep = audio["attention_mask"].bool()
    assert (own[keep] - mine[keep]).abs().max().item() < tol


def test_show_names_the_family_and_a_refused_type_says_why(family_dirs, tiny_manifest, tmp_path):
    runner = CliRunner()
    for family, model_dir in family_dirs.items():
        recipe = tmp_path / f"{family}.yaml"
        recipe.write_text(yaml.safe_dump(_raw(model_dir, tiny_manifest, tmp_path / "run")))
        res = runner.invoke(cli, ["show", str(recipe)])
        assert res.exit_code == 0, res.output
        first = res.output.splitlines()[0]
        assert first.startswith(f"# model family: {family} ({FAMILIES[family].model_class})"), first
        yaml.safe_load(res.output)  # still one YAML document
    with pytest.raises(FamilyError) as e:
        family_for_type("qwen3_omni_moe")
    msg = str(e.value)
    assert "'qwen3_omni_moe'" in msg and "fused 3-D" in msg and all(f in msg for f in FAMILIES)
    # a checkpoint of a type cordlite does not run is refused at load, before any weight is read
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "step_audio_2"}))
    from cordlite.config import ModelConfig, QuantizationConfig
    from cordlite.models.runtime import ModelLoadError, Runtime

    rt = Runtime(torch.device("cpu"), torch.float32, torch.float32, False, False)
    with pytest.raises(ModelLoadError, match="'step_audio_2' is not supported: Step-Audio-2 is not in transformers"):
        load_base(ModelConfig(name_or_path=str(odd)), QuantizationConfig(mode="none"), rt)
    # model.family names one explicitly; an unknown name is a recipe error naming the field
    bad = tmp_path / "bad.yaml"
    raw = _raw(family_dirs["qwen2_audio"], tiny_manifest, tmp_path / "run")
    raw["model"]["family"] = "qwen9_audio"
    bad.write_text(yaml.safe_dump(raw))
    res = runner.invoke(cli, ["validate", str(bad)])
    assert res.exit_code != 0 and "model.family: 'qwen9_audio'" in res.output and "audioflamingo3" in res.output


def test_recipe_layer_family_names_equal_the_registry():
    from cordlite.config import MODEL_FAMILIES

    assert MODEL_FAMILIES == tuple(FAMILIES)
    assert set(TINY_FAMILIES) == set(FAMILIES)  # every family has a tiny checkpoint and runs the tests above


def test_every_family_has_a_recipe_for_its_smallest_checkpoint():
    """recipes/ holds, for each family, a recipe on its smallest real checkpoint whose header names the
    hardware and the exact command; it validates (paths aside: the checkpoint is on the hub)."""
    root = Path(__file__).resolve().parents[1]
    by_model = {}
    for path in sorted((root / "recipes").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        by_model.setdefault(raw.get("model", {}).get("name_or_path"), []).append(path)
    for fam in FAMILIES.values():
        assert fam.smallest in by_model, (fam.name, fam.smallest)
        path = next(p for p in by_model[fam.smallest] if p.stem.endswith("_lora"))
        text = path.read_text()
        assert "# Hardware:" in text and f"# Command:  cordlite train recipes/{path.name}" in text, path
        recipe = recipe_from_dict(yaml.safe_load(text), str(path), check_paths=False)
        assert recipe.model.family is None  # found from the checkpoint's config.json


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_projector_adapters_keep_the_encoders_frames_reusable(family, family_dirs, tiny_manifest, tmp_path, lora_student,
                                                             plain_base):
    """Adapters on the projector (inside the audio tower for Qwen2.5-Omni) leave the encoder frozen:
    its digest is the plain base's and cached frames give the prompts computed from scratch;
    adapters on the encoder's layers make it trainable."""
    from cordlite.models.audio_view import FrameCache, encoder_digest, encoder_is_frozen, prompt_embeds

    raw = _raw(family_dirs[family], tiny_manifest, tmp_path / "run")
    raw["lora"]["audio_encoder"] = False
    model, processor, _ = lora_student(recipe_from_dict(raw))
    projector = "." + FAMILIES[family].projector.split(".", 1)[1] + "."  # under the peft wrapper's prefix
    assert any("lora_A" in n and projector in n for n, _ in model.named_parameters())
    assert encoder_is_frozen(model)
    assert encoder_digest(model) == encoder_digest(plain_base(family_dirs[family]))
    examples = read_manifest(tiny_manifest)[:3]
    audio = encode_views(processor, examples, AudioCache(), INSTRUCTION).audio
    cache = FrameCache()
    with torch.no_grad():
        fresh = prompt_embeds(model, audio)["inputs_embeds"]
        cache.prompt(model, [e.id for e in examples], audio)  # fills the cache
        cached = cache.prompt(model, [e.id for e in examples], audio)["inputs_embeds"]
    assert torch.equal(fresh, cached)
    raw["lora"]["audio_encoder"] = True
    model, _, _ = lora_student(recipe_from_dict(raw))
    assert not encoder_is_frozen(model)


def test_omni_processor_without_torchvision_is_the_real_class_for_audio_and_text(family_dirs, tiny_manifest, tmp_path):
    """Qwen2.5-Omni's processor built from its audio and text parts: the real class's prompts (three
    placeholders, one per 40 ms of the clip, inside <|audio_bos|> ... <|audio_eos|>), it
    refuses images with the reason, and save_pretrained writes files that load back to the same prompts
    and name the real class, with the image processor's settings kept."""
    from transformers import Qwen2_5OmniProcessor

    from cordlite.models.families.processors import audio_text_processor

    model_dir = family_dirs["qwen2_5_omni"]
    processor = audio_text_processor("Qwen2_5OmniProcessor", str(model_dir))
    processor.tokenizer.padding_side = "left"  # as cordlite's loaders set it
    assert isinstance(processor, Qwen2_5OmniProcessor)
    assert processor.image_processor is None and processor.video_processor is None
    examples = read_manifest(tiny_manifest)[:2]
    views = encode_views(processor, examples, AudioCache(), INSTRUCTION)
    ids = views.audio["input_ids"]
    frames = views.audio["feature_attention_mask"].sum(-1)
    placeholders = (ids == processor.audio_token_id).sum(-1)
    assert placeholders.tolist() == [((((n - 1) // 2 + 1) - 2) // 2 + 1) for n in frames.tolist()]  # 25 per s
    first = ids[0][views.audio["attention_mask"][0].bool()].tolist()
    start = first.index(processor.tokenizer.convert_tokens_to_ids("<|audio_bos|>"))
    assert first[start + 1 + int(placeholders[0])] == processor.tokenizer.convert_tokens_to_ids("<|audio_eos|>")
    with pytest.raises(ValueError, match="without its image and video processors"):
        processor(text=["x"], images=[torch.zeros(3, 28, 28)])
    processor.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "preprocessor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5OmniProcessor" and saved["image_processor_type"] == "Qwen2VLImageProcessor"
    again = audio_text_processor("Qwen2_5OmniProcessor", str(tmp_path / "saved"))
    again.tokenizer.padding_side = "left"
    views2 = encode_views(again, examples, AudioCache(), INSTRUCTION)
    assert torch.equal(views2.audio["input_ids"], ids) and torch.equal(views2.text["input_ids"], views.text["input_ids"])
    assert torch.equal(views2.audio["input_features"], views.audio["input_features"])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_views_from_frame_counts_are_the_family_processors(family, family_dirs, tiny_manifest, plain_base):
    """With a frame store's counts, cordlite writes the audio placeholders itself (no audio read, no
    mel features): the same ids and mask as the family's processor, span tokens included."""
    from cordlite.models.audio_view import FrameCache

    model = plain_base(family_dirs[family])
    processor = FAMILIES[family].load_processor(str(family_dirs[family]))
    processor.tokenizer.padding_side = "left"
    examples = read_manifest(tiny_manifest)[:3]
    full = encode_views(processor, examples, AudioCache(), INSTRUCTION)
    store = FrameCache()
    with torch.no_grad():
        store.frames_of(model, [ex.id for ex in examples], full.audio)
    light = encode_views(processor, examples, None, INSTRUCTION, frame_counts=store.counts())
    assert set(light.audio) == {"input_ids", "attention_mask"}
    for k in ("input_ids", "attention_mask"):
        assert torch.equal(light.audio[k], full.audio[k]), (family, k)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prefilled_sampling_and_shared_prompt_pass_are_the_models_own(family, family_dirs, tiny_manifest, plain_base):
    """The rollouts cordlite samples from merged embeddings with its own prefill are the model's own
    generate() on the processor's features, greedy token for token, and sampled rows are the same
    whether each row holds a copy of the prompt's keys and values or all share one; the gradient pass that reads each
    prompt once gives the hidden states of the repeated prompts (Gemma 4: per-layer inputs, shared keys
    and values, sliding windows; Qwen2.5-Omni: its 3-D positions' state)."""
    from transformers import GenerationConfig

    from cordlite.models.audio_view import prompt_embeds
    from cordlite.models.families import forward_inputs
    from cordlite.models.sampling import sample
    from cordlite.objective.logprobs import completion_hidden, shared_prompt_hidden

    model = plain_base(family_dirs[family])
    processor = FAMILIES[family].load_processor(str(family_dirs[family]))
    processor.tokenizer.padding_side = "left"
    audio = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), INSTRUCTION).audio
    tokens = Tokens.of(model, processor.tokenizer)
    with torch.no_grad():
        own = model.generate(**forward_inputs(model, audio), generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=GREEDY_TOKENS, eos_token_id=tokens.end_ids, pad_token_id=tokens.pad_id,
            suppress_tokens=tokens.blocked_ids))[:, audio["input_ids"].shape[1]:]
        prompt = prompt_embeds(model, audio)
        ours = sample(model, prompt, 1, temperature=1.0, greedy=True, max_new_tokens=GREEDY_TOKENS,
                      end_ids=tokens.end_ids, pad_id=tokens.pad_id, blocked_ids=tokens.blocked_ids)
        width = ours.completion_ids.shape[1]
        assert torch.equal(ours.completion_ids, own[:, :width].masked_fill(ours.completion_mask == 0, tokens.pad_id))
        # sampled rows: the same keys give the same tokens with the prompt copied to each row and stored once
        common = dict(temperature=[1.0, 1.5, 1.5], max_new_tokens=GREEDY_TOKENS, end_ids=tokens.end_ids,
                      pad_id=tokens.pad_id, blocked_ids=tokens.blocked_ids, keys=torch.tensor([3, 4]))
        copied = sample(model, prompt, 3, kv_cache="dynamic", **common)
        auto = sample(model, prompt, 3, **common)
        assert torch.equal(copied.completion_ids, auto.completion_ids)
        source = torch.tensor([0, 0, 1])
        ids = torch.randint(0, 200, (3, 5), generator=torch.Generator().manual_seed(0))
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
        shared = shared_prompt_hidden(model, prompt, source, ids, mask)
        repeated = completion_hidden(model, {k: v.index_select(0, source) for k, v in prompt.items()}, ids, mask)
    valid = mask.bool()
    assert torch.allclose(shared[valid], repeated[valid], rtol=1e-4, atol=1e-5)


def test_omni_processor_files_that_do_not_fit_the_class_get_one_message(family_dirs, tmp_path):
    """A checkpoint whose tokenizer lacks the names Qwen2.5-Omni's processor reads (audio_token, ...)
    is refused naming the directory, the class and the way out, not with a bare AttributeError."""
    import shutil

    bad = tmp_path / "omni"
    shutil.copytree(family_dirs["qwen2_5_omni"], bad)
    config = json.loads((bad / "tokenizer_config.json").read_text())
    for key in ("audio_token", "audio_bos_token", "audio_eos_token"):
        config.pop(key, None)
    (bad / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"omni: its processor files do not make a Qwen2_5OmniProcessor .*torchvision"):
        FAMILIES["qwen2_5_omni"].load_processor(str(bad))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_eval_answers_from_merged_audio_embeddings_equal_generate_with_features(family, family_dirs, tiny_manifest):
    """`cordlite eval`'s fast audio view (the encoder once per clip on its own length, the prompt read
    once by cordlite's prefill) gives the answers generate() gives from the features, token for token,
    for a batch of clips of different lengths."""
    from cordlite.deploy.loading import load_model
    from cordlite.eval.evaluate import EvalSettings, _answer_batch
    from cordlite.models.tokens import audio_special_token_ids, end_token_ids

    net, processor = load_model(str(family_dirs[family]), "cpu", "float32")
    views = encode_views(processor, read_manifest(tiny_manifest), AudioCache(), INSTRUCTION)
    tok = processor.tokenizer
    end = end_token_ids(net, tok)
    tokens = (end, tok.pad_token_id if tok.pad_token_id is not None else end[-1], audio_special_token_ids(tok))
    s = EvalSettings(manifest=str(tiny_manifest), out="unused", max_new_tokens=GREEDY_TOKENS)
    fast = _answer_batch(net, processor, views, s, tokens)["audio"]
    slow = _answer_batch(net, processor, views, s, tokens, embed_audio=False)["audio"]
    assert fast == slow
    assert len(set(fast[1])) > 1  # the clips get different answers: the audio is read
