"""The CLI's packing of several source files into one deterministic tar."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ownchat.cli.archive import pack_sources


def sources(root: Path) -> list[Path]:
    files = {
        "chats.jsonl": b'{"messages": []}\n',
        "transcripts.csv": b"conversation_id,role,content\n",
        "faq.html": b"<h2>Why?</h2><p>Because.</p>",
    }
    paths = []
    for name, data in files.items():
        path = root / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_files_are_packed_in_order_by_base_name_with_fixed_metadata(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    paths = sources(tmp_path / "export")
    packed = io.BytesIO()
    pack_sources(paths, packed)
    with tarfile.open(fileobj=io.BytesIO(packed.getvalue()), mode="r:") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == ["chats.jsonl", "transcripts.csv", "faq.html"]
        assert {(m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) for m in members} == {
            (0, 0, 0, 0o644, "", "")
        }
        assert all(m.isreg() for m in members)
        extracted = archive.extractfile("faq.html")
        assert extracted is not None and extracted.read() == paths[2].read_bytes()
    # The same files give the same bytes, whenever and by whomever they were written.
    paths[0].touch()
    again = io.BytesIO()
    pack_sources(paths, again)
    assert again.getvalue() == packed.getvalue()
    # Uncompressed: the data service tells the format from the bytes.
    assert packed.getvalue()[257:262] == b"ustar"


def test_clashing_names_and_other_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = sources(tmp_path / "a")[0], sources(tmp_path / "b")[0]
    with pytest.raises(ValueError, match="same name, chats.jsonl"):
        pack_sources([first, second], io.BytesIO())
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not a chat source"):
        pack_sources([first, notes], io.BytesIO())
