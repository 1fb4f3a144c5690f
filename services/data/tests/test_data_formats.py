"""Uploads in every supported format, bad records by position, and the skip policy."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError
from ownchat_data.core import BadRecordPolicy, DataCore, SourceFormat, UploadSpec
from ownchat_data.csv_transcript import CsvColumns
from ownchat_data.preference_jsonl import PreferenceSample
from ownchat_data.store import DataStore


@pytest.fixture
def core(tmp_path: Path) -> DataCore:
    return DataCore(
        DataStore(tmp_path / "data.db"),
        ArtifactStore(tmp_path / "artifacts"),
        max_upload_bytes=1 << 20,
        max_record_bytes=4096,
    )


def chunked(data: bytes, size: int = 11) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def spec(fmt: SourceFormat, **options: object) -> UploadSpec:
    settings: dict[str, object] = {"validation_fraction": 0.2, **options}
    return UploadSpec("support", "export", fmt, **settings)  # type: ignore[arg-type]


def sharegpt(items: list[object]) -> bytes:
    return json.dumps(items).encode()


GOOD_SHAREGPT = {
    "id": "x",
    "conversations": [
        {"from": "human", "value": "Is shipping free?"},
        {"from": "gpt", "value": "Above 50 euros, yes."},
    ],
}


def test_sharegpt_is_parsed_incrementally(core: DataCore) -> None:
    topics = ["shipping", "refunds", "warranty", "opening hours"]
    items = [
        {
            "conversations": [
                {"from": "human", "value": f"Tell me about {topic}, please."},
                {"from": "gpt", "value": f"Here is what our policy on {topic} says: {i}."},
            ]
        }
        for i, topic in enumerate(topics)
    ]
    items[3]["conversations"].insert(0, {"from": "system", "value": "Be brief."})
    version = core.upload(spec(SourceFormat.SHAREGPT_JSON), chunked(sharegpt(items)))
    assert version.kind == "chat"
    assert version.samples == 4
    assert version.messages == 9


def test_sharegpt_bad_items_are_named_by_position(core: DataCore) -> None:
    items = [
        GOOD_SHAREGPT,
        {"conversations": [{"from": "robot", "value": "beep"}]},
        {"conversations": [{"from": "human", "value": ""}]},
    ]
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(SourceFormat.SHAREGPT_JSON), chunked(sharegpt(items)))
    assert [v.field for v in error.value.violations] == ["item 2", "item 3"]
    assert "non-empty string" in error.value.violations[1].description
    assert "robot" in error.value.violations[0].description


@pytest.mark.parametrize(
    "body",
    [b'{"conversations": []}', b'[{"conversations": [', b"not json at all", b"[]"],
)
def test_sharegpt_that_is_not_a_list_of_conversations_is_refused(
    core: DataCore, body: bytes
) -> None:
    with pytest.raises(InvalidArgumentError):
        core.upload(spec(SourceFormat.SHAREGPT_JSON), iter([body]))
    assert core.list_datasets(10, 0) == []


CSV = (
    "ticket,author,text,sent_at\n"
    "1,customer,My router shows E42,2024-01-01T10:00:00\n"
    '1,agent,"Hold reset for 10 seconds,\nthen reinstall the firmware.",2024-01-01T10:01:00\n'
    "2,agent,How can I help?,2024-01-02T09:00:05\n"
    "2,customer,Is shipping free?,2024-01-02T09:00:00\n"
    "2,agent,Above 50 euros.,2024-01-02T09:01:00\n"
)
COLUMNS = CsvColumns(conversation_id="ticket", role="author", content="text", order="sent_at")


def test_csv_rows_become_ordered_conversations(core: DataCore, tmp_path: Path) -> None:
    version = core.upload(
        spec(SourceFormat.CSV_TRANSCRIPT, csv_columns=COLUMNS, validation_fraction=0.0),
        chunked(CSV.encode()),
    )
    # Ticket 2's two agent rows in a row become one assistant turn.
    assert (version.samples, version.messages) == (2, 4)
    assert version.sanitization.changed["turns_merged"] == 1
    lines = ArtifactStore(tmp_path / "artifacts").path(version.train_split.digest).read_text()
    conversations = [json.loads(line) for line in lines.splitlines()]
    second = next(c for c in conversations if c["record"] == 4)
    assert [m["role"] for m in second["messages"]] == ["user", "assistant"]
    assert second["messages"][1]["content"] == "How can I help?\n\nAbove 50 euros."
    first = next(c for c in conversations if c["record"] == 2)
    assert "then reinstall" in first["messages"][1]["content"]


def test_csv_problems_are_named_by_row(core: DataCore) -> None:
    body = CSV + "1,agent,late reply,2024-01-03T00:00:00\n3,martian,hi,2024-01-04T00:00:00\n"
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(SourceFormat.CSV_TRANSCRIPT, csv_columns=COLUMNS), chunked(body.encode()))
    # Rows count CSV records (the header is row 1); a quoted line break stays in its row.
    fields = [v.field for v in error.value.violations]
    assert fields == ["row 7", "row 8"]
    assert "sort the export" in error.value.violations[0].description


def test_csv_without_the_named_columns_is_refused(core: DataCore) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(SourceFormat.CSV_TRANSCRIPT), iter([CSV.encode()]))
    assert "conversation_id" in error.value.violations[0].description


def test_a_zip_file_is_refused_with_a_clear_error(core: DataCore) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("chats.jsonl", "{}")
    for fmt in SourceFormat:
        with pytest.raises(InvalidArgumentError):
            core.upload(spec(fmt), iter([archive.getvalue()]))
    assert core.list_datasets(10, 0) == []


def preference(prompt: str, chosen: str, rejected: str) -> str:
    return json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": chosen}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}],
        }
    )


def test_preference_pairs_become_a_preference_version(core: DataCore) -> None:
    lines = [preference(f"q{i}", f"good {i}", f"bad {i}") for i in range(10)]
    version = core.upload(spec(SourceFormat.PREFERENCE_JSONL), chunked("\n".join(lines).encode()))
    assert version.kind == "preference"
    [sample] = core.preview(version.id, validation=False, limit=1)
    assert isinstance(sample, PreferenceSample)
    assert sample.chosen.startswith("good")


def test_preference_problems_are_named(core: DataCore) -> None:
    lines = [
        preference("q", "same", "same"),
        json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]}}),
    ]
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(spec(SourceFormat.PREFERENCE_JSONL), iter(["\n".join(lines).encode()]))
    assert [v.field for v in error.value.violations] == ["line 1", "line 2"]


def test_skip_and_report_keeps_the_good_records(core: DataCore) -> None:
    good = json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    body = "\n".join([good, "{broken", good.replace('"b"', '"c"'), '{"messages": []}'])
    version = core.upload(
        spec(SourceFormat.OPENAI_CHAT_JSONL, bad_record_policy=BadRecordPolicy.SKIP_AND_REPORT),
        iter([body.encode()]),
    )
    assert version.samples == 2
    assert version.skipped_records == 2
    assert [issue.record for issue in version.skipped] == [2, 4]
    assert core.get_version(version.id).skipped == version.skipped


def test_skip_and_report_with_nothing_usable_is_still_refused(core: DataCore) -> None:
    with pytest.raises(InvalidArgumentError):
        core.upload(
            spec(SourceFormat.OPENAI_CHAT_JSONL, bad_record_policy=BadRecordPolicy.SKIP_AND_REPORT),
            iter([b"{broken\n[]\n"]),
        )
