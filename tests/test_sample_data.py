"""The demo's sample data: Acme Networks' raw support history, as the product ingests it.

examples/support/generate.py writes it; these tests check that the committed
files are what it writes, and that the product's data funnel does to them what
the demo shows: every source ingests, sanitization removes every planted value
and keeps every fact, duplicates go (across files too), and the held-out
questions and reviewer feedback are in the formats the product reads. The data
service's core is called directly; no server is started.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
import regex

from ownchat.artifacts import ArtifactStore
from ownchat_data.chat_jsonl import ChatSample, parse_chat_jsonl
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.csv_transcript import CsvColumns
from ownchat_data.pii import PiiScanner
from ownchat_data.preference_jsonl import PreferenceSample, parse_preference_jsonl
from ownchat_data.sanitize import SanitizeOptions
from ownchat_data.store import DatasetVersion, DataStore

SUPPORT = Path(__file__).resolve().parents[1] / "examples" / "support"
OUTPUTS = (
    "conversations.jsonl",
    "transcripts.csv",
    "faq.html",
    "heldout.jsonl",
    "planted.json",
    "feedback.jsonl",
)
# How the demo maps the help desk's CSV export.
CSV_COLUMNS = CsvColumns(
    conversation_id="ticket_id", role="author", content="message", order="sent_at"
)
# One key phrase per fact, stated verbatim in every source: what a fine-tuned
# model must learn, and what sanitization must leave alone.
KEY_PHRASES = (
    "129 euros",
    "79 euros",
    "30 days",
    "interrupted firmware update",
    "yellow WAN port",
    "3-year warranty",
    "8:00 to 20:00 CET",
    "59 euros",
    "2 business days",
    "4.99 euros a month",
    "SafeHours",
    "15 seconds",
)
SOURCES = {
    "conversations.jsonl": SourceFormat.OPENAI_CHAT_JSONL,
    "transcripts.csv": SourceFormat.CSV_TRANSCRIPT,
    "faq.html": SourceFormat.FAQ,
}
# What an upload does unless told otherwise: placeholders for PII, every step on.
DEFAULT_SANITIZATION = SanitizeOptions()
_WORD = re.compile(r"\w+")


def planted() -> list[dict[str, str]]:
    return json.loads((SUPPORT / "planted.json").read_text(encoding="utf-8"))


def jsonl(name: str) -> list[dict]:
    lines = (SUPPORT / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def csv_rows() -> list[dict[str, str]]:
    text = (SUPPORT / "transcripts.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


class _FaqPage(HTMLParser):
    """The page's visible text, and each h2-h6/dt question with the text that follows it.

    Deliberately simpler than the product's FAQ parser: an independent reading
    of the rule that a heading or <dt> ending with "?" starts a question.
    """

    HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6", "dt"}

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.questions: list[list[str]] = []  # [question, answer text...]
        self._heading: list[str] | None = None
        self._open: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.HEADINGS:
            self._heading, self._open = [], None

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag in self.HEADINGS and self._heading is not None:
            heading = " ".join("".join(self._heading).split())
            self._heading = None
            if heading.endswith("?"):
                self._open = [heading]
                self.questions.append(self._open)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)
        elif self._open is not None and data.strip():
            self._open.append(data.strip())


def faq_page() -> _FaqPage:
    page = _FaqPage()
    page.feed((SUPPORT / "faq.html").read_text(encoding="utf-8"))
    page.close()
    return page


def raw_texts() -> dict[str, list[str]]:
    """Every message of the raw training files, and the FAQ page's visible text."""
    return {
        "conversations.jsonl": [
            m["content"] for line in jsonl("conversations.jsonl") for m in line["messages"]
        ],
        "transcripts.csv": [row["message"] for row in csv_rows()],
        "faq.html": [" ".join(faq_page().text)],
    }


def training_questions() -> list[str]:
    """What customers ask in the training files, FAQ questions included."""
    return (
        [
            m["content"]
            for line in jsonl("conversations.jsonl")
            for m in line["messages"]
            if m["role"] == "user"
        ]
        + [row["message"] for row in csv_rows() if row["author"] == "customer"]
        + [question for question, *_ in faq_page().questions]
    )


def heldout_questions() -> list[str]:
    return [
        next(m["content"] for m in line["messages"] if m["role"] == "user")
        for line in jsonl("heldout.jsonl")
    ]


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


@dataclass(frozen=True)
class Upload:
    version: DatasetVersion
    samples: list[ChatSample]

    @property
    def removed(self) -> dict[str, int]:
        return self.version.sanitization.removed

    def text(self) -> str:
        return "\n".join(m.content for s in self.samples for m in s.messages)


def upload(
    core: DataCore,
    name: str,
    file_name: str,
    fmt: SourceFormat,
    data: bytes,
    validation_fraction: float = 0.1,
    sanitize: SanitizeOptions = DEFAULT_SANITIZATION,
) -> Upload:
    spec = UploadSpec(
        name,
        file_name,
        fmt,
        validation_fraction,
        csv_columns=CSV_COLUMNS,
        sanitize=sanitize,
    )
    version = core.upload(spec, iter([data]))
    samples = []
    for validation in (False, True):
        exported = b"".join(core.export(version.id, validation, 1 << 16)).decode()
        samples += [ChatSample.from_json(line) for line in exported.splitlines()]
    assert version.kind == "chat" and len(samples) == version.samples
    return Upload(version, samples)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> DataCore:
    home = tmp_path_factory.mktemp("data")
    return DataCore(
        DataStore(home / "data.db"),
        ArtifactStore(home / "artifacts"),
        max_upload_bytes=1 << 24,
        max_record_bytes=1 << 20,
    )


@pytest.fixture(scope="module")
def uploads(core: DataCore) -> dict[str, Upload]:
    """Each training file uploaded alone, and all three in one archive, sanitized by default."""
    result = {}
    for index, (name, fmt) in enumerate(SOURCES.items()):
        data = (SUPPORT / name).read_bytes()
        result[name] = upload(core, f"source-{index}", name, fmt, data)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as members:
        for name in SOURCES:
            members.write(SUPPORT / name, name)
    result["archive"] = upload(
        core, "support", "support.zip", SourceFormat.ARCHIVE, archive.getvalue()
    )
    return result


def test_the_committed_files_are_what_the_generator_writes(tmp_path: Path):
    subprocess.run(
        [sys.executable, str(SUPPORT / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (SUPPORT / name).read_bytes(), name


def test_the_scanner_finds_exactly_the_planted_values():
    """Every planted value is found with its type, and nothing else: no fact looks like PII."""
    scanner = PiiScanner()
    found = {
        (file, span.type.value, span.value)
        for file, texts in raw_texts().items()
        for text in texts
        for span in scanner.scan(text)
    }
    values = planted()
    assert 30 <= len(values) <= 40
    assert found == {(p["file"], p["type"], p["value"]) for p in values}
    assert all(p["probe"].strip() for p in values)


def test_every_source_ingests_as_chat_samples_without_a_bad_record(uploads: dict[str, Upload]):
    for name, result in uploads.items():
        assert result.version.skipped_records == 0, name
        assert all(s.messages[-1].role == "assistant" for s in result.samples), name
    assert uploads["conversations.jsonl"].version.samples >= 150
    assert uploads["transcripts.csv"].version.samples >= 60
    # The FAQ's questions, by an independent reading of the page.
    questions = faq_page().questions
    assert len(questions) == uploads["faq.html"].version.samples >= 12
    assert all(len(answer) >= 1 for _, *answer in questions)


def test_sanitization_removes_every_planted_value(uploads: dict[str, Upload]):
    for name, result in uploads.items():
        kept = result.text()
        for value in planted():
            for form in (value["value"], re.sub(r"\s", "", value["value"])):
                assert form not in kept, (name, value)
    changed = uploads["archive"].version.sanitization.changed
    assert changed.get("pii_email") and changed.get("pii_iban") and changed.get("pii_password")


def test_sanitization_keeps_every_fact_in_every_source(uploads: dict[str, Upload]):
    for name in SOURCES:
        kept = uploads[name].text()
        missing = [phrase for phrase in KEY_PHRASES if phrase not in kept]
        assert missing == [], name


def test_duplicates_and_one_sided_chats_are_removed(uploads: dict[str, Upload]):
    for name in ("conversations.jsonl", "transcripts.csv"):
        removed = uploads[name].removed
        assert removed.get("near_duplicate", 0) > 0, name
        assert removed.get("exact_duplicate", 0) > 0, name
        assert removed.get("one_sided", 0) > 0, name
    # Chats the help desk logged as well: found only when the files are uploaded together.
    duplicates = ("near_duplicate", "exact_duplicate")
    alone = sum(uploads[name].removed.get(why, 0) for name in SOURCES for why in duplicates)
    together = sum(uploads["archive"].removed.get(why, 0) for why in duplicates)
    assert together > alone


def test_the_conversations_in_other_languages_are_found(core: DataCore):
    data = (SUPPORT / "conversations.jsonl").read_bytes()
    english = SanitizeOptions(languages=frozenset({"en"}))
    result = upload(
        core, "english", "c.jsonl", SourceFormat.OPENAI_CHAT_JSONL, data, sanitize=english
    )
    assert result.removed.get("other_language", 0) >= 3


def test_every_heldout_question_carries_an_answer_its_reference_gives(core: DataCore):
    data = (SUPPORT / "heldout.jsonl").read_bytes()
    parsed = list(parse_chat_jsonl([data], 1 << 20))
    assert all(isinstance(s, ChatSample) for s in parsed)
    assert 30 <= len(parsed) <= 36
    for sample in parsed:
        assert isinstance(sample, ChatSample) and sample.expected is not None
        assert [m.role for m in sample.messages][-2:] == ["user", "assistant"]
        reference, expected = sample.messages[-1].content, sample.expected
        if expected.kind == "regex":
            assert regex.search(expected.answer, reference), sample
            # A number, a code or a name: not something any reply about routers matches.
            assert not regex.search(expected.answer, "Please contact our support team."), sample
        else:
            assert expected.kind == "contains"
            assert expected.answer.casefold() in reference.casefold(), sample
    # As the demo uploads it: an evaluation-only version that keeps every question.
    result = upload(
        core, "heldout", "heldout.jsonl", SourceFormat.OPENAI_CHAT_JSONL, data,
        validation_fraction=1.0,
    )  # fmt: skip
    assert result.version.validation_samples == len(parsed)
    assert all(s.expected is not None for s in result.samples)


def test_no_heldout_question_is_worded_like_a_training_question():
    raw = " ".join((SUPPORT / name).read_text(encoding="utf-8") for name in SOURCES).casefold()
    training = [words(question) for question in training_questions()]
    for question in heldout_questions():
        assert question.casefold() not in raw, question
        # Other words, not a new opener on the same sentence.
        closest = max(len(words(question) & t) / len(words(question) | t) for t in training)
        assert closest < 0.5, question


def test_the_feedback_is_in_the_formats_the_product_reads():
    records = jsonl("feedback.jsonl")
    assert 8 <= len(records) <= 16
    pairs = [r for r in records if "chosen" in r]
    corrections = [r for r in records if "correction" in r]
    assert pairs and corrections and len(pairs) + len(corrections) == len(records)
    # A pair is the stored form of a preference sample; the upload format wraps it.
    upload_lines = [
        json.dumps(
            {
                "input": {"messages": r["prompt"]},
                "preferred_output": [{"role": "assistant", "content": r["chosen"]}],
                "non_preferred_output": [{"role": "assistant", "content": r["rejected"]}],
            }
        )
        for r in pairs
    ]
    parsed = list(parse_preference_jsonl(["\n".join(upload_lines).encode()], 1 << 20))
    assert all(isinstance(p, PreferenceSample) for p in parsed) and len(parsed) == len(pairs)
    # A correction is a prompt and the reply to train on: a chat sample.
    chat_lines = [
        json.dumps({"messages": [*r["prompt"], {"role": "assistant", "content": r["correction"]}]})
        for r in corrections
    ]
    parsed_chats = list(parse_chat_jsonl(["\n".join(chat_lines).encode()], 1 << 20))
    assert all(isinstance(c, ChatSample) for c in parsed_chats)
    # The feedback speaks of the facts, and never of a held-out question.
    heldout = {q.casefold() for q in heldout_questions()}
    for record in records:
        good = record.get("chosen") or record["correction"]
        assert any(phrase in good for phrase in KEY_PHRASES), record
        assert record["prompt"][-1]["content"].casefold() not in heldout
