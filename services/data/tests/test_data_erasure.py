"""Right to erasure: a new version without the data, every file that held it deleted,
and an audit record that keeps only hashes of the erased values."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError, NotFoundError, UnavailableError
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.erasure import ErasureRequest
from ownchat_data.sanitize import SanitizeOptions
from ownchat_data.store import DataStore

SECRET_NAME = "Zanzibar Quillfeather"


def conversation(i: int, user: str | None = None) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": user or f"Question number {i} about routers?"},
                {"role": "assistant", "content": f"Answer number {i} about routers."},
            ]
        }
    )


def every_stored_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def every_stored_row(location: str) -> bytes:
    """Every value in every table of a PostgreSQL store (a SQLite store is a file
    under the test's folder, which ``every_stored_byte`` reads)."""
    with psycopg.connect(location) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        return b"".join(
            repr(connection.execute(f'SELECT * FROM "{table}"').fetchall()).encode()
            for (table,) in tables
        )


@pytest.fixture
def core(tmp_path: Path, store_location: Path | str) -> DataCore:
    # On both engines: the store holds the audit record and lineage, not the data.
    return DataCore(
        DataStore(store_location),
        ArtifactStore(tmp_path / "artifacts"),
        1 << 20,
        1 << 16,
    )


def upload(core: DataCore, lines: list[str]) -> str:
    # PII replacement off: names are not detected anyway, and this tests erasure alone.
    spec = UploadSpec(
        "support", "chats.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.3,
        sanitize=SanitizeOptions(pii_mode=None),
    )  # fmt: skip
    return core.upload(spec, iter(["\n".join(lines).encode()])).id


def test_erasing_a_value_leaves_it_nowhere_in_storage(
    core: DataCore, tmp_path: Path, store_location: Path | str
) -> None:
    lines = [conversation(i) for i in range(20)]
    lines[4] = conversation(4, f"Hi, I am {SECRET_NAME} and my router is broken.")
    first = upload(core, lines)
    second = upload(core, [*lines, conversation(99)])
    assert SECRET_NAME.encode() in every_stored_byte(tmp_path)

    result = core.erase("support", ErasureRequest(frozenset(), (SECRET_NAME.lower(),)))
    assert result.erasure.removed_samples == 1
    assert result.version.samples == 20
    assert set(result.erasure.erased_version_ids) == {first, second}
    assert SECRET_NAME.encode() not in every_stored_byte(tmp_path)
    assert SECRET_NAME.lower().encode() not in every_stored_byte(tmp_path).lower()
    if not isinstance(store_location, Path):
        rows = every_stored_row(store_location)
        assert result.erasure.id.encode() in rows  # the audit record is there...
        assert SECRET_NAME.lower().encode() not in rows.lower()  # ...without the value

    assert core.get_version(first).erased_by == result.erasure.id
    assert core.get_version(result.version.id).erased_by == ""
    assert core.preview(result.version.id, validation=False, limit=100)
    audit = core._store.get_erasure(result.erasure.id)  # noqa: SLF001 - the audit record itself
    assert audit.value_sha256 and SECRET_NAME not in json.dumps(audit.__dict__)


def test_erasing_a_source_record_follows_lineage(core: DataCore, tmp_path: Path) -> None:
    version_id = upload(core, [conversation(i) for i in range(10)])
    version = core.get_version(version_id)
    request = ErasureRequest(frozenset({(version.source.digest, 3)}), ())
    result = core.erase("support", request)
    assert result.erasure.removed_samples == 1
    remaining = [
        sample.record
        for split in (False, True)
        for sample in core.preview(result.version.id, validation=split, limit=100)
    ]
    assert 3 not in remaining and len(remaining) == 9
    # Record 3 is the third line of the source: conversation 2.
    assert b"Question number 2 " not in every_stored_byte(tmp_path)
    assert b"Question number 3 " in every_stored_byte(tmp_path)


def test_bad_erasure_requests(core: DataCore) -> None:
    upload(core, [conversation(i) for i in range(3)])
    with pytest.raises(InvalidArgumentError):
        core.erase("support", ErasureRequest(frozenset(), ()))
    with pytest.raises(InvalidArgumentError):
        core.erase("support", ErasureRequest(frozenset(), ("a",)))
    with pytest.raises(NotFoundError):
        core.erase("missing", ErasureRequest(frozenset(), ("router",)))


def test_an_interrupted_erasure_is_finished_at_start(core: DataCore, tmp_path: Path) -> None:
    lines = [conversation(i) for i in range(10)]
    lines[2] = conversation(2, f"Call {SECRET_NAME} back about the router.")
    upload(core, lines)
    store = ArtifactStore(tmp_path / "artifacts")
    deleted: list[str] = []
    original = store.delete
    core._artifacts.delete = lambda digest: deleted.append(digest) or False  # type: ignore[method-assign]  # noqa: SLF001
    result = core.erase("support", ErasureRequest(frozenset(), (SECRET_NAME,)))
    assert deleted and SECRET_NAME.encode() in every_stored_byte(tmp_path)
    core._artifacts.delete = original  # type: ignore[method-assign]  # noqa: SLF001
    assert core.finish_erasures() == len(result.erasure.deleted_artifacts)
    assert SECRET_NAME.encode() not in every_stored_byte(tmp_path)


def test_models_trained_on_erased_versions_are_blocked_even_after_an_outage(
    tmp_path: Path,
) -> None:
    calls: list[tuple[list[str], str]] = []
    trainer_up = False

    def block(version_ids: list[str], reason: str) -> list[str]:
        if not trainer_up:
            raise UnavailableError("the trainer service is unavailable")
        calls.append((version_ids, reason))
        return ["ft:base:x:1"]

    core = DataCore(
        DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16,
        block_models=block,
    )  # fmt: skip
    lines = [conversation(i) for i in range(6)]
    lines[1] = conversation(1, f"{SECRET_NAME} here, about my router.")
    version_id = upload(core, lines)
    result = core.erase("support", ErasureRequest(frozenset(), (SECRET_NAME,)))
    assert result.erasure.blocked_model_ids is None and not calls

    trainer_up = True
    core.finish_erasures()
    [(version_ids, reason)] = calls
    assert version_ids == [version_id]
    assert result.erasure.id in reason and result.version.id in reason
    audit = core._store.get_erasure(result.erasure.id)  # noqa: SLF001
    assert audit.blocked_model_ids == ("ft:base:x:1",)
    core.finish_erasures()
    assert len(calls) == 1, "a finished erasure is not sent again"


def answered(i: int, expected: object) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"Who handles ticket {i}?"},
                {"role": "assistant", "content": f"Ticket {i} is handled by our team."},
            ],
            "expected": expected,
        }
    )


@pytest.mark.parametrize(
    "expected",
    [
        {"answer": f"Ticket 4 is handled by {SECRET_NAME}.", "kind": "exact"},
        {"answer": SECRET_NAME, "kind": "contains"},
        # A pattern spells the value with escapes; erasure reads what it spells.
        {"answer": r"z\.quillfeather@zanzibar\.example", "kind": "regex"},
        # Spelled so that no scan of the source file's bytes finds the value.
        {"answer": r"z[.]quillfeather\x40zanzibar[.]example", "kind": "regex"},
    ],
)
def test_a_value_only_in_an_expected_answer_is_erased(
    core: DataCore, tmp_path: Path, expected: dict[str, str]
) -> None:
    lines = [conversation(i) for i in range(8)]
    lines[4] = answered(4, expected)
    upload(core, lines)
    value = SECRET_NAME if expected["kind"] != "regex" else "Z.Quillfeather@zanzibar.example"
    assert b"quillfeather" in every_stored_byte(tmp_path).lower()

    result = core.erase("support", ErasureRequest(frozenset(), (value,)))
    assert result.erasure.removed_samples == 1
    assert result.version.samples == 7
    # Gone from the splits and from the uploaded source file alike.
    assert b"quillfeather" not in every_stored_byte(tmp_path).lower()
