"""The reply metrics: sacrebleu's BLEU and chrF, task checks, lengths, refusals, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sacrebleu

from ownchat_evaluator.bleu_chrf import corpus_score, new_metric, sample_statistics, score_from_sums
from ownchat_evaluator.checks import CheckKind, ExpectedAnswer, TaskCheck, check_reply
from ownchat_evaluator.replies import DEFAULT_REFUSAL_PATTERNS, is_refusal, length_p95
from ownchat_evaluator.samples import SplitFormatError, read_samples
from ownchat_evaluator.statistics import statistic
from ownchat_evaluator.store import SampleOutput

REPLIES = [
    "The Zephyr X2 costs 129 euros.",
    "Refunds are accepted within 30 days of delivery.",
    "Restart the router, then try the update again.",
    "I'm sorry, but I cannot help with that.",
]
REFERENCES = [
    "The Zephyr X2 router costs 129 euros.",
    "Our refund window is 30 days from delivery.",
    "Please restart the device and try again.",
    "Error code E42 means the firmware update was interrupted.",
]


def test_bleu_and_chrf_are_sacrebleus_to_the_last_digit() -> None:
    bleu = corpus_score("bleu", REPLIES, REFERENCES)
    chrf = corpus_score("chrf", REPLIES, REFERENCES)
    assert bleu.value == sacrebleu.corpus_bleu(REPLIES, [REFERENCES]).score
    assert chrf.value == sacrebleu.corpus_chrf(REPLIES, [REFERENCES]).score
    assert bleu.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert chrf.signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert 0 < bleu.value < 100 and 0 < chrf.value < 100


@pytest.mark.parametrize("name", ["bleu", "chrf"])
def test_summed_sample_statistics_give_the_corpus_score(name: str) -> None:
    stats = sample_statistics(name, REPLIES, REFERENCES)
    assert stats.shape[0] == len(REPLIES)
    metric = new_metric(name)
    assert (
        score_from_sums(metric, stats.sum(axis=0)) == corpus_score(name, REPLIES, REFERENCES).value
    )
    # A resample drawing the first reply twice is the corpus score of that corpus.
    drawn = [0, 0, 2, 3]
    expected = corpus_score(name, [REPLIES[i] for i in drawn], [REFERENCES[i] for i in drawn])
    assert score_from_sums(metric, stats[drawn].sum(axis=0)) == pytest.approx(expected.value)


def test_the_bleu_statistic_ignores_samples_without_a_reply() -> None:
    outputs = [
        SampleOutput(i, [], ref, reply, 5, 0.0, 0, reply.startswith("I'm sorry"), None)
        for i, (reply, ref) in enumerate(zip(REPLIES, REFERENCES, strict=True))
    ]
    outputs.append(SampleOutput(4, [], "An unanswered reference.", None, 0, 0.0, 0, None, None))
    assert statistic("bleu", outputs).value() == pytest.approx(
        corpus_score("bleu", REPLIES, REFERENCES).value
    )
    assert statistic("refusal_rate", outputs).value() == 0.25
    assert statistic("response_length", outputs).value() == 5.0


def passes(
    reply: str, reference: str, expected: ExpectedAnswer | None, check: TaskCheck | None
) -> bool | None:
    outcome = check_reply(reply, reference, expected, check)
    return None if outcome is None else outcome.passed


def test_task_checks_compare_normalised_texts() -> None:
    contains = TaskCheck(CheckKind.CONTAINS)
    exact = TaskCheck(CheckKind.EXACT)
    reference = "129 euros"
    assert passes("It costs  129 EUROS.", reference, None, contains) is True
    assert passes("It costs 130 euros.", reference, None, contains) is False
    assert passes(" 129   Euros\n", reference, None, exact) is True
    assert passes("It costs 129 euros", reference, None, exact) is False
    assert passes("anything", reference, None, None) is None


def test_a_run_regex_extracts_the_answer_from_reference_and_reply() -> None:
    price = TaskCheck(CheckKind.REGEX, r"(\d+) euros")
    reference = "The Zephyr X2 router costs 129 euros."
    good = check_reply("That is 129 euros, shipped.", reference, None, price)
    bad = check_reply("That is 130 euros.", reference, None, price)
    none = check_reply("Free!", reference, None, price)
    assert good is not None and good.passed and good.expected == "129"
    assert bad is not None and not bad.passed
    assert none is not None and not none.passed
    # A reference without an answer to extract is not checked.
    assert check_reply("129 euros", "Please restart.", None, price) is None


def test_a_samples_own_answer_wins_over_the_run_check() -> None:
    own = ExpectedAnswer(r"E4\d", CheckKind.REGEX)
    outcome = check_reply("Code E42 again.", "unrelated", own, TaskCheck(CheckKind.EXACT))
    assert outcome is not None and outcome.passed and outcome.own_answer
    assert passes("Nothing", "x", ExpectedAnswer("yes", CheckKind.EXACT), None) is False


def test_refusals_and_lengths() -> None:
    assert is_refusal("I\u2019m sorry, but I can\u2019t share that.", DEFAULT_REFUSAL_PATTERNS)
    assert is_refusal("As an AI, I have no opinion.", DEFAULT_REFUSAL_PATTERNS)
    assert not is_refusal("Sorry for the delay: it ships today.", DEFAULT_REFUSAL_PATTERNS)
    assert is_refusal("Nope.", ["nope"])
    assert length_p95(list(range(1, 101))) == pytest.approx(np.percentile(range(1, 101), 95))
    assert length_p95([7]) == 7.0


def test_samples_carry_context_reference_and_expected_answers(tmp_path: Path) -> None:
    split = tmp_path / "validation.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": "Price?"},
                {"role": "assistant", "content": "129 euros."},
                {"role": "user", "content": "Thanks"},
            ],
            "expected": {"answer": "129", "kind": "contains"},
        },
        {"messages": [{"role": "user", "content": "Hello?"}], "expected": "hi"},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    ]
    split.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    first, second, third = read_samples(split, 0)
    assert first.context == [{"role": "user", "content": "Price?"}]
    assert first.reference == "129 euros."
    assert first.expected == ExpectedAnswer("129", CheckKind.CONTAINS)
    assert second.reference is None and second.expected == ExpectedAnswer("hi", CheckKind.EXACT)
    assert third.expected is None and third.index == 2
    assert len(read_samples(split, 2)) == 2
    split.write_text(json.dumps({"messages": [], "expected": {"answer": 1}}) + "\n")
    with pytest.raises(SplitFormatError, match="line 1"):
        read_samples(split, 0)
