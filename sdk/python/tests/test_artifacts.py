"""The content-addressed artifact store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ownchat.artifacts import MANIFEST_NAME, ArtifactStore
from ownchat.errors import NotFoundError


def test_bytes_are_stored_once_by_their_hash(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.put_bytes(b"hello")
    assert first.digest == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.put_bytes(b"hello") == first
    assert store.path(first.digest).read_bytes() == b"hello"


def test_an_aborted_write_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as writer:
        writer.write(b"partial")
        raise RuntimeError("client went away")
    assert list((tmp_path / "sha256").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_tree_is_addressed_by_its_manifest_and_tampering_is_seen(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(b"\x00" * 10)
    store = ArtifactStore(tmp_path / "store")
    artifact = store.put_tree(source)
    assert artifact.size_bytes == 12
    assert store.put_tree(source) == artifact
    stored = store.path(artifact.digest)
    assert (stored / MANIFEST_NAME).is_file()
    assert store.verify_tree(artifact.digest) == []
    (stored / "sub" / "weights.bin").write_bytes(b"\x01" * 10)
    assert store.verify_tree(artifact.digest) == ["sub/weights.bin"]


@pytest.mark.parametrize("digest", ["sha256:../../etc", "md5:abc", "sha256:" + "0" * 64, ""])
def test_unknown_or_malformed_addresses_are_not_found(tmp_path: Path, digest: str) -> None:
    with pytest.raises(NotFoundError):
        ArtifactStore(tmp_path).path(digest)
