"""What every command module shares: how a command stops on a user's mistake, and how quiet
the libraries underneath are (`cordlite --verbose` lets them speak).

Used by cordlite/cli.py, eval/cli.py, deploy/cli.py, testbed/cli.py and data_tools/cli.py; it
imports only click, cordlite.lock and cordlite.files (standard library), so `cordlite --help` stays instant.
"""

from __future__ import annotations

import errno
import os
import sys

import click

DEBUG_ENV = "CORDLITE_DEBUG"
VERBOSE_ENV = "CORDLITE_VERBOSE"

# Log messages of other libraries that a cordlite user can do nothing about (each checked on this
# stack): logger name -> message start. Everything else still shows. (peft's FutureWarning about a
# deprecated transformers property is silenced where cordlite calls peft: models.lora.peft_wrapping.)
_QUIET_LOGGERS = {
    # bitsandbytes on an AVX512-BF16 CPU offers an optional kernel from a hub package ("kernels") and
    # falls back to its own when it is absent: the fallback is what runs, correctly.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    # The gradient pass hands its checkpointed layers a replay-safe cache on purpose
    # (cordlite.models.kv_cache.grad_pass_cache); transformers warns about caches and checkpointing in general.
    "transformers.utils.generic": "`use_cache=True` is incompatible with gradient checkpointing",
}


class _DropStart:
    """A logging filter that drops the records whose message starts with `start`."""

    def __init__(self, start: str):
        self.start = start

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.start)


def verbose_wanted() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries(verbose: bool = False) -> None:
    """Silence the third-party messages in _QUIET_LOGGERS and transformers'
    per-load progress bars ("Loading weights", "Writing model shards"); downloads keep their bars
    (huggingface_hub's own). With `verbose` (or CORDLITE_VERBOSE=1) nothing is silenced."""
    import logging

    if verbose or verbose_wanted():
        os.environ[VERBOSE_ENV] = "1"  # processes this command starts (accelerate, suite workers) speak too
        return
    for name, start in _QUIET_LOGGERS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropStart) for f in log.filters):  # once per process
            log.addFilter(_DropStart(start))
    from transformers.utils import logging as hf_logging  # transformers' own module, not the whole library

    hf_logging.disable_progress_bar()

_FIXES = {
    errno.EEXIST: "a file is in the way: choose another path or move that file",
    errno.ENOTDIR: "a file is in the way where a directory is needed: choose another path or move that file",
    errno.EISDIR: "that is a directory, a file is needed: give the file's path",
    errno.EACCES: "not allowed: choose a directory you can write to, or fix its permissions",
    errno.EPERM: "not allowed: choose a directory you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another directory",
    errno.ENOSPC: "the disk is full: free some space and run the command again (training: with --resume)",
    errno.ENOENT: "no such file or directory: check the path",
}


def fail(message: str, code: int = 2) -> None:
    """Print `error: MESSAGE` on stderr and exit with `code` (2: bad usage or input, 1: the work failed)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def os_error_message(e: OSError) -> str:
    """One line for an OS error on a file: the path, what happened, and the fix."""
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    what = e.strerror or str(e)
    fix = _FIXES.get(e.errno or -1)
    return f"{where + ': ' if where else ''}{what}{'; ' + fix if fix else ''}"


class Group(click.Group):
    """The command group: an OS error on a file a command was given (the output directory is a
    file, not writable, the disk is full) ends in one line naming the path and the fix, exit
    status 1, instead of a traceback. CORDLITE_DEBUG=1 shows the traceback."""

    def invoke(self, ctx: click.Context):
        from cordlite.lock import LockError

        try:
            return super().invoke(ctx)
        except LockError as e:  # another process writes the same folder
            fail(str(e), 1)
        except click.UsageError as e:  # a subcommand's options or arguments: one line too, not click's block
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            fail(f"{e.format_message()}{where}", e.exit_code)
        except OSError as e:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            fail(f"{os_error_message(e)} (set {DEBUG_ENV}=1 for the traceback)", 1)
        except UnicodeDecodeError as e:  # a file given that is not UTF-8, where no reader named it
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            fail(f"a file given is not UTF-8 text ({e.reason} at byte {e.start}: 0x{e.object[e.start]:02x}); "
                 f"save it as UTF-8 (set {DEBUG_ENV}=1 for the traceback to see which)", 1)
        except Exception as e:  # a library hiding an OS error in its own class (safetensors: a full disk)
            from cordlite.files import io_error_of

            err = None if isinstance(e, (click.ClickException, click.exceptions.Exit)) else io_error_of(e)
            if err is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            fail(f"{os_error_message(err)} (set {DEBUG_ENV}=1 for the traceback)", 1)


def key_value_pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """Callback of the --set options: each value is KEY=VALUE. Runs before click looks for extra
    arguments, so `--set train.max_steps 10` is named here rather than as "unexpected extra argument"."""
    for value in values:
        if "=" not in value:
            raise click.BadParameter(f"{value!r} has no '='; write KEY=VALUE as one word, e.g. "
                                     f"--set {value}=VALUE", ctx=ctx, param=param)
    return values
