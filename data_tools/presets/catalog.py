"""The presets: the CORD paper's training set and benchmarks, what each reads and writes.

Each `Preset` names its hub dataset, splits, columns, licence and citation, and whether it is
voiced with TTS (numina, gsm8k) or imports the benchmark's own audio (mmsu, openbookqa, mmau).
"""

from __future__ import annotations

from dataclasses import dataclass

from data_tools.presets.splits import PresetError, SplitData

VOICEBENCH_BIB = ("@article{chen2024voicebench, title={VoiceBench: Benchmarking LLM-Based Voice Assistants}, "
                  "author={Chen, Yiming and Yue, Xianghu and Zhang, Chen and Gao, Xiaoxue and Tan, Robby T. and "
                  "Li, Haizhou}, journal={arXiv preprint arXiv:2410.17196}, year={2024}}")


IMPORTED = "imported.jsonl"  # imported presets: one line per clip written (its duration facts), for resuming


MMSU_SPLITS = ("law", "engineering", "other", "biology", "business", "economics", "health", "philosophy",
               "psychology", "history", "chemistry", "physics")


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    """voiced (text questions, our TTS) or imported (the benchmark's own audio)."""
    hub_id: str
    config: str | None
    splits: tuple[str, ...]
    columns: tuple[str, ...]
    """Columns every record must have (the hub schema this preset reads)."""
    subset: str
    """The rows' `source`: the subset name `cordlite eval` reports."""
    extraction: str | None
    """The benchmark's answer rule (cordlite.judge.conventions.EXTRACTION_MODES); None for training data."""
    licence: str
    citation: str
    bibtex: str
    default_n: int | None = None
    """Rows when --n is not given (None: all)."""
    text_view: bool = True


# Where the schemas come from (checked against public sources, not against a download):
#   AI-MO/NuminaMath-CoT  hub card and viewer: splits train (859k) and test (100); columns source,
#                         problem, solution, messages. Only `problem` (and `source`) are read.
#   hlt-lab/voicebench    VoiceBench's main.py (load_dataset(..., config, split); item['prompt'],
#                         item['audio']; its evaluator compares item['reference'] with A-D) and
#                         NeMo-Skills' VoiceBench preparation: mmsu has the 12 domain splits below plus
#                         question_id, cot_content, category, src; openbookqa has split test.
#   openai/gsm8k          config main, splits train/test, columns question and answer ("... #### N").
#   lmms-lab/mmau         hub card: id, audio, question, choices (a string: JSON, parsed with json.loads
#                         by lmms-eval's MMAU task), answer (the option text), dataset, task, split,
#                         category, sub-category, difficulty; splits test and test_mini.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("numina", "voiced", "AI-MO/NuminaMath-CoT", None, ("train",), ("problem",), "numina", None,
           "Apache-2.0 (hub card; some earlier revisions of the card said CC-BY-NC-4.0: check the revision you use)",
           "Li et al. 2024, NuminaMath, huggingface.co/datasets/AI-MO/NuminaMath-CoT",
           "@misc{numina_math_datasets, author={Jia Li and Edward Beeching and Lewis Tunstall and Ben Lipkin and "
           "Roman Soletskyi and Shengyi Costa Huang and Kashif Rasul and Longhui Yu and Albert Jiang and Ziju Shen "
           "and Zihan Qin and Bin Dong and Li Zhou and Yann Fleureau and Guillaume Lample and Stanislas Polu}, "
           "title={NuminaMath}, year={2024}, publisher={Numina}, "
           "howpublished={\\url{https://huggingface.co/AI-MO/NuminaMath-CoT}}}", default_n=80000),
    Preset("mmsu", "imported", "hlt-lab/voicebench", "mmsu", MMSU_SPLITS, ("audio", "prompt", "reference"), "mmsu",
           "voicebench_mcq", "Apache-2.0 (VoiceBench); questions from MMLU-Pro (MIT)",
           "Chen et al. 2024, VoiceBench, arXiv:2410.17196", VOICEBENCH_BIB),
    Preset("openbookqa", "imported", "hlt-lab/voicebench", "openbookqa", ("test",), ("audio", "prompt", "reference"),
           "openbookqa", "voicebench_mcq", "Apache-2.0 (VoiceBench); questions from OpenBookQA (Mihaylov et al. 2018)",
           "Chen et al. 2024, VoiceBench, arXiv:2410.17196", VOICEBENCH_BIB),
    Preset("gsm8k", "voiced", "openai/gsm8k", "main", ("test",), ("question", "answer"), "gsm8k", "gsm8k", "MIT",
           "Cobbe et al. 2021, Training Verifiers to Solve Math Word Problems, arXiv:2110.14168",
           "@article{cobbe2021gsm8k, title={Training Verifiers to Solve Math Word Problems}, author={Cobbe, Karl and "
           "Kosaraju, Vineet and Bavarian, Mohammad and Chen, Mark and Jun, Heewoo and Kaiser, Lukasz and Plappert, "
           "Matthias and Tworek, Jerry and Hilton, Jacob and Nakano, Reiichiro and Hesse, Christopher and Schulman, "
           "John}, journal={arXiv preprint arXiv:2110.14168}, year={2021}}"),
    # lmms-lab/mmau: the MMAU test-mini questions with their clips as parquet (choices as a JSON
    # string). The official release is a JSON file plus an audio archive (github.com/Sakshi113/MMAU).
    Preset("mmau", "imported", "lmms-lab/mmau", None, ("test_mini",), ("audio", "question", "choices", "answer"),
           "mmau", "mmau", "not stated on the hub card; see github.com/Sakshi113/MMAU (clips from AudioSet, "
           "MusicCaps and other sources, each under its own terms)",
           "Sakshi et al. 2024, MMAU: A Massive Multi-Task Audio Understanding and Reasoning Benchmark, "
           "arXiv:2410.19168",
           "@misc{sakshi2024mmau, title={MMAU: A Massive Multi-Task Audio Understanding and Reasoning Benchmark}, "
           "author={S Sakshi and Utkarsh Tyagi and Sonal Kumar and Ashish Seth and Ramaneswaran Selvakumar and Oriol "
           "Nieto and Ramani Duraiswami and Sreyan Ghosh and Dinesh Manocha}, year={2024}, eprint={2410.19168}, "
           "archivePrefix={arXiv}}", text_view=False),
)}


ALIASES = {"obqa": "openbookqa", "numinamath": "numina", "mmau-test-mini": "mmau"}


@dataclass(frozen=True)
class PresetSettings:
    """What a preset run is asked to do; `settings` in preset.json (a rerun must match)."""

    preset: str
    out: str
    source: str | None = None
    n: int | None = None
    seed: int = 0
    splits: tuple[str, ...] = ()
    max_seconds: float = 30.0
    audio_format: str = "wav"
    backend: str = "auto"
    tts_model: str = ""
    workers: int = 0
    progress: bool = True


def get_preset(name: str) -> Preset:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[key]


def origin(p: Preset, used: str, split: str, row: int) -> dict:
    return {"dataset": used, "config": p.config, "split": split, "row": row, "licence": p.licence,
            "citation": p.citation}


def select(splits: list[SplitData], n: int | None, seed: int) -> list[tuple[int, int]]:
    """(split index, row) pairs: everything in dataset order, or a seeded sample of n kept in order."""
    import random

    flat = [(k, i) for k, s in enumerate(splits) for i in range(s.size)]
    if n is None or n >= len(flat):
        return flat
    return [flat[j] for j in sorted(random.Random(seed).sample(range(len(flat)), n))]
