"""Tests for the testbed task generator (cordlite.testbed.task): pure, no model, no audio.

Run with: python -m pytest tests/test_testbed_task.py -q   (about a second)
"""

from __future__ import annotations

import pytest

from cordlite.testbed.fixed import TEST_FINGERPRINT, FixedSplitError, check_fixed_test
from cordlite.testbed.task import (
    OPS,
    QUESTION,
    SPLIT_VOICES,
    SPLITS,
    START,
    TaskSpec,
    Template,
    all_templates,
    chain_of_thought,
    check_answer,
    check_chain,
    final_answer,
    fingerprint,
    make_splits,
    template_split,
)

SMALL = TaskSpec(n_train=600, n_cord=100, n_val=80, n_test=80)


@pytest.fixture(scope="module")
def splits():
    return make_splits(SMALL)


def test_chain_of_thought_by_hand():
    answer, final = chain_of_thought(7, [("add", 5), ("sub", 3)])
    assert answer == "7 + 5 = 12. 12 - 3 = 9. The answer is 9."
    assert final == 9
    answer, final = chain_of_thought(4, [("mul", 3), ("div", 2), ("add", 1)])
    assert answer == "4 * 3 = 12. 12 / 2 = 6. 6 + 1 = 7. The answer is 7."
    with pytest.raises(ValueError, match="not an exact step"):
        chain_of_thought(7, [("div", 2)])


def test_checker():
    assert final_answer("7 + 5 = 12. The answer is 12.") == 12
    assert final_answer("The answer is 12") == 12
    assert final_answer("7 + 5 = 12.") is None  # no final statement
    assert final_answer("The answer is 12. And more") is None  # must end the response
    assert check_answer("3 + 4 = 7. The answer is 7.", 7)
    assert not check_answer("3 + 4 = 8. The answer is 8.", 7)
    assert check_chain("3 + 4 = 7. 7 * 2 = 14. The answer is 14.")
    assert not check_chain("3 + 4 = 8. The answer is 8.")  # false arithmetic
    assert not check_chain("3 + 4 = 7. 6 - 1 = 5. The answer is 5.")  # step does not continue the chain
    assert not check_chain("3 + 4 = 7. The answer is 8.")  # stated answer is not the last result


def test_template_count_and_keys():
    templates = all_templates()
    # 2 ops: 3 starts * 9 middles * (9 lasts * 3 questions + 2 divisions) = 783; 3 ops: * 9 more middles
    assert len(templates) == 783 + 7047
    assert len({t.key for t in templates}) == len(templates)
    assert Template(1, (("add", 0), ("div", 1)), None).key == "s1|add0|div1|q-"


def test_deterministic():
    a, b = make_splits(SMALL), make_splits(SMALL)
    for s in SPLITS:
        assert [p.question for p in a[s]] == [p.question for p in b[s]]
        assert fingerprint(a[s]) == fingerprint(b[s])
    other = make_splits(TaskSpec(n_train=600, n_cord=100, n_val=80, n_test=80, seed=1))
    assert fingerprint(other["test"]) != fingerprint(a["test"])


def test_sizes_and_answers_verify(splits):
    assert [len(splits[s]) for s in SPLITS] == [600, 100, 80, 80]
    for s in SPLITS:
        for p in splits[s]:
            assert check_chain(p.answer), p.answer
            assert check_answer(p.answer, p.final)
            assert 2 <= p.answer.count("=") <= 3  # 2 or 3 operations
            assert all(1 <= v <= SMALL.max_value for v in p.values)


def test_no_question_or_template_leakage(splits):
    questions = {s: {p.question for p in splits[s]} for s in SPLITS}
    templates = {s: {p.template for p in splits[s]} for s in SPLITS}
    for i, a in enumerate(SPLITS):
        assert len(questions[a]) == len(splits[a])  # no repeats inside a split either
        for b in SPLITS[i + 1 :]:
            assert not questions[a] & questions[b], (a, b)
            assert not templates[a] & templates[b], (a, b)
    # Every template sits in the split its hash says.
    by_key = {t.key: t for t in all_templates()}
    for s in SPLITS:
        assert all(template_split(by_key[k], SMALL) == s for k in templates[s])


def test_heldout_templates_share_every_phrasing_with_train():
    """Held-out templates are new combinations, never new phrasings: every sentence pattern of
    every split occurs in some training template."""
    train = [t for t in all_templates() if template_split(t, TaskSpec()) == "train"]
    starts = {t.start for t in train}
    steps = {step for t in train for step in t.steps}
    questions = {t.question for t in train}
    assert starts == set(range(len(START)))
    assert steps == {(op, v) for op in OPS for v in range(len(OPS[op]))}
    assert questions >= set(range(len(QUESTION)))


def test_voices_disjoint(splits):
    train_like = set(SPLIT_VOICES["train"].names) | set(SPLIT_VOICES["cord"].names)
    for held in ("val", "test"):
        v = SPLIT_VOICES[held]
        assert not set(v.names) & train_like
        assert not set(v.rates) & set(SPLIT_VOICES["train"].rates)
        assert not set(v.pitches) & set(SPLIT_VOICES["train"].pitches)
    assert not set(SPLIT_VOICES["val"].names) & set(SPLIT_VOICES["test"].names)
    used = {s: {p.voice for p in splits[s]} for s in SPLITS}
    assert not (used["train"] | used["cord"]) & used["test"]
    assert used["test"] <= set(SPLIT_VOICES["test"].all())


def test_test_split_does_not_depend_on_other_sizes():
    a = make_splits(TaskSpec(n_train=50, n_cord=5, n_val=5, n_test=40))
    b = make_splits(TaskSpec(n_train=90, n_cord=9, n_val=7, n_test=40))
    assert fingerprint(a["test"]) == fingerprint(b["test"])


def test_fixed_test_split():
    assert TEST_FINGERPRINT, "the test split's fingerprint must be recorded in cordlite/testbed/fixed.py"
    test = make_splits(TaskSpec())["test"]
    assert len(test) >= 300
    check_fixed_test(TaskSpec(), test)  # the default task still produces the recorded split
    with pytest.raises(FixedSplitError, match="fingerprint"):
        check_fixed_test(TaskSpec(), test[:-1])


def test_answers_readable_by_the_judge(splits):
    """CORD's rule judge (cordlite.judge.verify) must read the task's final answer and tell answers apart."""
    from cordlite.judge.verify import same_final_answer

    a, b = splits["test"][0], next(p for p in splits["test"] if p.final != splits["test"][0].final)
    assert same_final_answer(a.answer, a.answer)
    assert same_final_answer(f"1 + 1 = 2. The answer is {a.final}.", a.answer)
    assert not same_final_answer(b.answer, a.answer)


def test_bad_spec_is_named():
    with pytest.raises(ValueError, match="n_test"):
        make_splits(TaskSpec(n_test=0))
    with pytest.raises(ValueError, match="max_start"):
        make_splits(TaskSpec(max_start=40))


def test_error_kinds_by_hand():
    from cordlite.testbed.errors import error_counts, error_kind

    ref = "7 + 5 = 12. 12 - 3 = 9. The answer is 9."
    assert error_kind(ref, ref) == "right"
    assert error_kind("9 + 5 = 14. 14 - 3 = 11. The answer is 11.", ref) == "operands"  # misheard 7
    assert error_kind("7 + 5 = 12. 12 * 3 = 36. The answer is 36.", ref) == "operands"  # misheard the operation
    assert error_kind("7 + 5 = 13. 13 - 3 = 10. The answer is 10.", ref) == "steps"  # right reading, wrong sum
    assert error_kind("7 + 5 = 12. 12 - 3 = 9. The answer is 8.", ref) == "steps"
    assert error_kind("The answer is 4.", ref) == "format"
    rows = [{"id": "a", "view": "audio", "response": ref}, {"id": "a", "view": "text", "response": ref},
            {"id": "b", "view": "audio", "response": "The answer is"}]
    assert error_counts(rows, {"a": ref, "b": ref}) == {"right": 1, "operands": 0, "steps": 0, "format": 1}


@pytest.mark.parametrize("transcript, numbers, heard", [
    (" Mia has seven shells. She finds 5 more.", (7, 5), True),
    (" Me as a seven shells. She finds five more. She gives free to Omar.", (7, 5, 3), False),  # 3 misheard
    (" She finds 5 more. Mia has seven shells.", (7, 5), False),  # order matters
    (" He has twenty-one apples.", (21,), True),
    (" He has twenty one apples.", (20,), False),  # 20 is not the head of 21
    (" He has 20 apples and 1 pear.", (20, 1), True),
    (" A hundred and five, then 1,200.", (105, 1200), True),
    (" Cats and dogs: 5.", (5,), True),
])
def test_hearing_probe_reads_numbers_as_digits_or_words(transcript, numbers, heard):
    from cordlite.testbed.hearing import heard_numbers

    assert heard_numbers(transcript, numbers) is heard


def test_hearing_probe_takes_the_numbers_the_question_says():
    from cordlite.testbed.hearing import written_numbers

    assert written_numbers("Paul has 2 balls. He triples them. He loses 12. He gives 1,200 away.") == (2, 12, 1200)
