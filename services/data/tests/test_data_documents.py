"""Documents become text chunks of whole paragraphs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.documents import TextSample, parse_document
from ownchat_data.store import DataStore

MARKDOWN = """# Zephyr X2 manual

The Zephyr X2 is a dual-band router.

## Reset

Hold the pin button for 15 seconds
until the light blinks amber.
"""


def chunks(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_paragraphs_are_kept_whole_and_joined_up_to_the_limit() -> None:
    samples = list(parse_document(chunks(MARKDOWN.encode()), "manual.md", chunk_chars=80))
    assert [s.record for s in samples] == list(range(1, len(samples) + 1))
    assert all(len(s.text) <= 80 for s in samples)
    text = "\n\n".join(s.text for s in samples)
    assert "Hold the pin button for 15 seconds until the light blinks amber." in text


def test_html_is_reduced_to_its_text() -> None:
    page = (
        "<html><head><style>p{color:red}</style><script>var x=1;</script></head>"
        "<body><h1>FAQ</h1><p>Refunds within <b>30 days</b>.</p><p>Shipping &amp; returns.</p>"
        "</body></html>"
    )
    [sample] = parse_document(chunks(page.encode(), 5), "faq.html")
    assert sample.text == "FAQ\n\nRefunds within 30 days.\n\nShipping & returns."


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3000))
def test_no_chunk_is_longer_than_the_limit(text: str) -> None:
    samples = list(parse_document([text.encode()], "notes.txt", chunk_chars=200))
    assert all(0 < len(s.text) <= 200 for s in samples)
    words = [w for s in samples for w in s.text.split()]
    assert "".join(words) == "".join(text.split())


def test_a_document_upload_is_a_text_version(tmp_path: Path) -> None:
    core = DataCore(DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 16)
    version = core.upload(
        UploadSpec("manuals", "manual.md", SourceFormat.DOCUMENT, 0.0), iter([MARKDOWN.encode()])
    )
    assert version.kind == "text"
    [sample] = core.preview(version.id, validation=False, limit=5)
    assert isinstance(sample, TextSample) and sample.text.startswith("# Zephyr X2 manual")
    with pytest.raises(InvalidArgumentError) as error:
        core.upload(
            UploadSpec("manuals", "bad.txt", SourceFormat.DOCUMENT, 0.0), iter([b"ok \xff\xfe"])
        )
    assert "UTF-8" in error.value.violations[0].description
