"""The `cordlite` command: the group, the recipe commands (train, validate, show) and the tiny
model and data; eval/cli.py, deploy/cli.py, testbed/cli.py and data_tools/cli.py add theirs.
Each command parses arguments, loads the config and calls one function. No logic here.

Heavy imports (torch, transformers) happen inside commands, so `cordlite --help` is instant.
"""

from __future__ import annotations

import os
import sys

import click

from cordlite.cli_common import Group, fail, key_value_pairs, quiet_libraries
from cordlite.config import MODEL_FAMILIES
from cordlite.schema import ConfigError


def _recipe(path: str, overrides: tuple[str, ...], check_paths: bool = True):
    from cordlite.recipe import load_recipe

    try:
        return load_recipe(path, overrides, check_paths=check_paths)
    except ConfigError as e:
        fail(str(e))


overrides_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", callback=key_value_pairs,
                                help="Override a recipe field, e.g. --set train.max_steps=10 (repeatable).")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cordlite")
@click.option("--verbose", "-v", is_flag=True,
              help="Show the libraries' notices and per-load progress bars that cordlite silences (also "
                   "CORDLITE_VERBOSE=1).")
def main(verbose: bool) -> None:
    """cordlite: close the audio-text gap of audio language models with CORD."""
    quiet_libraries(verbose)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
@click.option("--resume", is_flag=True, help="Continue the run in output.dir from its last intact checkpoint (the "
              "recipe must be the run's; only max_steps, checkpointing, progress and memory settings may change).")
@click.option("--overwrite", is_flag=True, help="Start the run in output.dir again from step 0, removing its results.")
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine, started through accelerate launch.")
def train(recipe: str, overrides: tuple[str, ...], resume: bool, overwrite: bool, num_processes: int) -> None:
    """Train with CORD as RECIPE says; writes config.yaml, metrics.jsonl, checkpoints/ and adapter/."""
    if resume and overwrite:
        fail("--resume and --overwrite: pass one (continue the run, or start it again from step 0)")
    cfg = _recipe(recipe, overrides)
    if num_processes > 1 and "WORLD_SIZE" not in os.environ:
        from cordlite.train.distributed import launch

        argv = ["train", recipe, *(a for kv in overrides for a in ("--set", kv)), *(["--resume"] if resume else []),
                *(["--overwrite"] if overwrite else [])]
        sys.exit(launch(num_processes, argv))
    from cordlite.audio import AudioError
    from cordlite.data import ManifestError
    from cordlite.models.kv_cache import BudgetError
    from cordlite.models.runtime import ModelLoadError
    from cordlite.train.trainer import TrainError, train as run

    try:
        run_dir = run(cfg, resume=resume, overwrite=overwrite)
    except (TrainError, ManifestError, AudioError, ModelLoadError, BudgetError) as e:
        fail(str(e), 1)
    click.echo(f"done: adapter in {run_dir / 'adapter'}, metrics in {run_dir / 'metrics.jsonl'}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
@click.option("--no-check-paths", is_flag=True, help="Check fields only, not that the model and data paths exist.")
def validate(recipe: str, overrides: tuple[str, ...], no_check_paths: bool) -> None:
    """Check RECIPE; exit 0 when valid, else list every problem."""
    _recipe(recipe, overrides, check_paths=not no_check_paths)
    click.echo(f"{recipe}: ok")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
def show(recipe: str, overrides: tuple[str, ...]) -> None:
    """Print RECIPE fully resolved (defaults and overrides applied) as YAML, after a comment line
    naming the model family its checkpoint resolves to."""
    from cordlite.config import TINY_MODEL_DIR, is_tiny_path
    from cordlite.models.families import describe_family
    from cordlite.recipe import dump_recipe

    r = _recipe(recipe, overrides, check_paths=False)
    m = r.model
    tiny = m.create_tiny_if_missing and is_tiny_path(m.name_or_path, TINY_MODEL_DIR)
    click.echo(f"# model family: {describe_family(m.name_or_path, m.family, m.revision, tiny)}")
    click.echo(dump_recipe(r), nl=False)


@main.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing tiny model directory.")
@click.option("--family", type=click.Choice(MODEL_FAMILIES), default="qwen2_audio", show_default=True,
              help="The model family (its real transformers class, processor and chat template).")
def tiny_model(out_dir: str, overwrite: bool, family: str) -> None:
    """Build a tiny random-init checkpoint of a model family with its processor in OUT_DIR (offline, seconds)."""
    from cordlite.lock import writer_lock
    from cordlite.models.tiny_families import build_tiny, ensure_tiny

    with writer_lock(out_dir, "cordlite tiny-model", fix="pass another OUT_DIR"):
        path = build_tiny(family, out_dir, overwrite=True) if overwrite else ensure_tiny(family, out_dir)
    click.echo(f"tiny {family} in {path}")


@main.command("tiny-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n", "n_questions", default=48, show_default=True, help="Number of spoken questions.")
@click.option("--seed", default=0, show_default=True)
def tiny_data(out_dir: str, n_questions: int, seed: int) -> None:
    """Voice a small set of arithmetic and multiple-choice questions with espeak-ng into OUT_DIR."""
    from cordlite.lock import writer_lock
    from data_tools.tiny_spoken import make_tiny_spoken_set

    with writer_lock(out_dir, "cordlite tiny-data", fix="pass another OUT_DIR"):
        click.echo(f"manifest: {make_tiny_spoken_set(out_dir, n_questions=n_questions, seed=seed)}")


# `cordlite eval|diagnose|judge-check` and `cordlite merge|infer`: their modules import only click.
from cordlite.deploy.cli import infer, merge  # noqa: E402
from cordlite.eval.cli import diagnose, eval_cmd, judge_check  # noqa: E402

for _command in (eval_cmd, judge_check, diagnose, merge, infer):
    main.add_command(_command)

# `cordlite data tts|check|speak`: data_tools.cli imports only click at module level.
from data_tools.cli import data as data_group  # noqa: E402

main.add_command(data_group)

# `cordlite testbed build|eval`: cordlite.testbed.cli imports only click at module level.
from cordlite.testbed.cli import testbed as testbed_group  # noqa: E402

main.add_command(testbed_group)


if __name__ == "__main__":
    main()
