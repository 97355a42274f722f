"""The fixed test split: its fingerprint, recorded before any method was run on the testbed.

The build refuses to run when the default task would produce a different test split (a changed
phrasing, vocabulary, voice table or generator), so every reported number is on the same
questions and voices. A deliberate change of the task must update TEST_FINGERPRINT here and say
so in docs/testbed.md, since numbers before and after are then not comparable.
"""

from __future__ import annotations

from cordlite.testbed.task import Problem, TaskSpec, fingerprint

# sha256 of the 400 test problems of TaskSpec() (ids, templates, questions, answers, voices).
TEST_FINGERPRINT = "e2c619b4a56911d7b69e49f72c5698baf544feec5edf6b62182c4bb0b0702ee6"


class FixedSplitError(RuntimeError):
    """The default task no longer produces the recorded test split."""


# The same 400 questions spoken by flite's voices (task.FLITE_SPLIT_VOICES): the pretrained-encoder
# testbed. Recorded with its voice table, before any method ran on it.
TEST_FINGERPRINT_FLITE = "2aa1e92d53ee4ff85cc5bcb966b213f828f6cbcf541236f900cc5ce0041bf32a"
_FINGERPRINTS = {"espeak": TEST_FINGERPRINT, "flite": TEST_FINGERPRINT_FLITE}


def check_fixed_test(spec: TaskSpec, test: list[Problem], voices: str = "espeak") -> None:
    """Raise FixedSplitError when `spec` is the default task but its test split (with the voice
    table `voices`: espeak or flite) differs from the recorded one."""
    expected = _FINGERPRINTS[voices]
    if spec != TaskSpec() or not expected:
        return
    got = fingerprint(test)
    if got != expected:
        raise FixedSplitError(
            f"the test split of the default task has fingerprint {got[:16]}..., not the recorded "
            f"{expected[:16]}... (cordlite/testbed/fixed.py): the task generator, phrasings or "
            "voices changed. Revert the change, or record the new fingerprint there deliberately and "
            "re-run every method, since results on the old and new test split are not comparable")
