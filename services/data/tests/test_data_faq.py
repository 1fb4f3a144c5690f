"""FAQ pages become one-turn conversations: a question and the answer under it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError
from ownchat_data.chat_jsonl import ChatSample
from ownchat_data.core import BadRecordPolicy, DataCore, SourceFormat, UploadSpec
from ownchat_data.faq import parse_faq
from ownchat_data.records import MalformedSource, RecordError, RecordTooLarge
from ownchat_data.store import DataStore

HTML = """<!doctype html>
<html><head><title>Help?</title><style>h2 { color: red }</style></head><body>
<h1>Zephyr support</h1>
<p>Answers to what customers ask most.</p>
<h2>Shipping</h2>
<h3>Is   shipping <em>free</em>?</h3>
<p>Above 50 euros,
   yes.</p>
<p>Below that it costs <b>4&nbsp;euros</b> &amp; takes 3 days.</p>
<h3>How do I reset my <a href="/x2">Zephyr X2</a>?</h3>
<p>Do this:</p>
<ol><li>Unplug the router.</li><li>Hold <code>reset</code> for 15 seconds.</li></ol>
<script>var asked = "Why?";</script>
<h2>Returns</h2>
<p>Our return policy, in short.</p>
<dl>
  <dt>Can I return opened items?<dd>Yes, within 30 days.
  <dt>Where is my refund?</dt><dd><p>On its way:</p><p>allow 5 days.</p></dd>
</dl>
</body></html>
"""

MARKDOWN = """# Zephyr support

Answers to what customers ask most.

## Shipping

### Is shipping free? ###
Above 50 euros, yes.


Below that it costs 4 euros.

### How do I reset my Zephyr X2?
1. Unplug the router.
2. Hold reset for 15 seconds.

```sh
# is this a heading?
zephyr reset --hard
```

## Returns

Our return policy, in short.
"""


def chunks(data: str, size: int = 7) -> list[bytes]:
    raw = data.encode()
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def pairs(parsed: list[ChatSample | RecordError]) -> list[tuple[int, str, str]]:
    out = []
    for sample in parsed:
        assert isinstance(sample, ChatSample)
        user, assistant = sample.messages
        assert (user.role, assistant.role) == ("user", "assistant")
        out.append((sample.record, user.content, assistant.content))
    return out


def test_html_headings_and_definition_lists_become_questions() -> None:
    parsed = list(parse_faq(chunks(HTML), 4096, "help/faq.html"))
    assert pairs(parsed) == [
        (
            1,
            "Is shipping free?",
            "Above 50 euros, yes.\n\nBelow that it costs 4 euros & takes 3 days.",
        ),
        (
            2,
            "How do I reset my Zephyr X2?",
            "Do this:\n\nUnplug the router.\nHold reset for 15 seconds.",
        ),
        (3, "Can I return opened items?", "Yes, within 30 days."),
        (4, "Where is my refund?", "On its way:\n\nallow 5 days."),
    ]


def test_markdown_headings_become_questions() -> None:
    parsed = list(parse_faq(chunks(MARKDOWN, 5), 4096, "FAQ.md"))
    assert pairs(parsed) == [
        (1, "Is shipping free?", "Above 50 euros, yes.\n\nBelow that it costs 4 euros."),
        (
            2,
            "How do I reset my Zephyr X2?",
            "1. Unplug the router.\n2. Hold reset for 15 seconds.\n\n"
            "```sh\n# is this a heading?\nzephyr reset --hard\n```",
        ),
    ]


@pytest.mark.parametrize(
    ("name", "page"),
    [
        ("faq.html", "<h2>Is it free?</h2><h2>Shipping</h2><p>Text.</p><h2>Why?</h2><p>A.</p>"),
        ("faq.md", "## Is it free?\n\n## Shipping\nText.\n## Why?\nA.\n"),
    ],
)
def test_a_question_without_an_answer_is_a_bad_record(name: str, page: str) -> None:
    first, second = parse_faq([page.encode()], 4096, name)
    assert isinstance(first, RecordError) and first.record == 1
    assert "Is it free?" in first.reason
    # The section title's text belongs to no answer; numbering goes on by question.
    assert pairs([second]) == [(2, "Why?", "A.")]


def test_a_page_without_questions_is_refused() -> None:
    with pytest.raises(MalformedSource, match="no question found"):
        list(parse_faq([b"<h1>Manual</h1><p>Text.</p>"], 4096, "manual.htm"))
    with pytest.raises(MalformedSource, match="UTF-8"):
        list(parse_faq([b"## Why?\n\xff\xfe"], 4096, "faq.markdown"))


def test_an_answer_longer_than_a_record_is_refused() -> None:
    page = "<h2>Short?</h2><p>Yes.</p><h2>Long?</h2>" + "<p>words words</p>" * 500
    with pytest.raises(RecordTooLarge) as error:
        list(parse_faq(chunks(page, 64), 1000, "faq.html"))
    assert error.value.record == 2


def test_an_faq_upload_is_a_sanitized_chat_version(tmp_path: Path) -> None:
    core = DataCore(DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16)
    page = HTML.replace("allow 5 days.", "write to refunds@zephyr.example.")
    version = core.upload(
        UploadSpec("faq", "faq.html", SourceFormat.FAQ, 0.0), iter(chunks(page, 100))
    )
    assert version.kind == "chat"
    assert (version.samples, version.messages) == (4, 8)
    samples = core.preview(version.id, validation=False, limit=10)
    refund = next(s for s in samples if isinstance(s, ChatSample) and s.record == 4)
    assert refund.messages[1].content == "On its way:\n\nwrite to <EMAIL_1>."


def test_bad_questions_are_named_by_number_and_the_policy_applies(tmp_path: Path) -> None:
    core = DataCore(DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16)
    page = "## Is it free?\nAbove 50 euros.\n## Do you ship abroad?\n## Can I pay later?\nYes.\n"
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(UploadSpec("faq", "faq.md", SourceFormat.FAQ, 0.0), iter([page.encode()]))
    assert [v.field for v in error.value.violations] == ["question 2"]
    assert core.list_datasets(10, 0) == []
    version = core.upload(
        UploadSpec(
            "faq", "faq.md", SourceFormat.FAQ, 0.0,
            bad_record_policy=BadRecordPolicy.SKIP_AND_REPORT,
        ),
        iter([page.encode()]),
    )  # fmt: skip
    assert version.samples == 2
    assert [issue.record for issue in version.skipped] == [2]
