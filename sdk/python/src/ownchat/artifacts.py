"""The shared, content-addressed artifact store.

Large artifacts (dataset splits, checkpoints) are written once under
``<root>/sha256/<hex>`` and passed between services by that address, never by
a client-supplied path. A directory artifact carries a manifest of its files'
hashes; its address is the hash of the manifest. Writes go to a temporary
name, are fsynced, then renamed, so a half-written artifact is never visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ownchat.errors import NotFoundError

MANIFEST_NAME = "ownchat-manifest.json"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Artifact:
    """An artifact's address and size."""

    digest: str
    size_bytes: int


def fsync_directory(path: Path) -> None:
    """Makes a directory's entries (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashingWriter:
    """A file being written into the store; hashes as it goes."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._hash.update(data)
        self.size_bytes += len(data)

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class ArtifactStore:
    """A directory of immutable artifacts addressed by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._objects = root / "sha256"
        self._tmp = root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    @property
    def tmp_dir(self) -> Path:
        """Scratch space on the store's file system, for staging work in progress."""
        return self._tmp

    def path(self, digest: str) -> Path:
        """The local path of an artifact; NOT_FOUND when it is not stored."""
        algorithm, _, hexdigest = digest.partition(":")
        if (
            algorithm != "sha256"
            or len(hexdigest) != 64
            or not all(c in "0123456789abcdef" for c in hexdigest)
        ):
            raise NotFoundError("artifact", digest)
        location = self._objects / hexdigest
        if not location.exists():
            raise NotFoundError("artifact", digest)
        return location

    def _commit(self, staged: Path, hexdigest: str) -> Path:
        target = self._objects / hexdigest
        if target.exists():
            if staged.is_dir():
                shutil.rmtree(staged)
            else:
                staged.unlink()
        else:
            os.replace(staged, target)
            fsync_directory(self._objects)
        return target

    @contextmanager
    def writer(self) -> Iterator[HashingWriter]:
        """Writes one file artifact; committed only if the block ends normally.

        The digest and size are on the writer after the block.
        """
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="file-")
        staged = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                writer = HashingWriter(handle)
                yield writer
                handle.flush()
                os.fsync(handle.fileno())
            self._commit(staged, writer.hexdigest)
        finally:
            if staged.exists():
                staged.unlink()

    def put_bytes(self, data: bytes) -> Artifact:
        """Stores bytes as a file artifact."""
        with self.writer() as writer:
            writer.write(data)
        return Artifact(f"sha256:{writer.hexdigest}", writer.size_bytes)

    def put_tree(self, source: Path) -> Artifact:
        """Stores a directory (a checkpoint, say) as one artifact."""
        files: dict[str, dict[str, object]] = {}
        total = 0
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source).as_posix()
            if relative == MANIFEST_NAME:
                continue
            size = path.stat().st_size
            files[relative] = {"sha256": file_sha256(path), "size": size}
            total += size
        manifest = json.dumps({"files": files}, sort_keys=True, indent=1).encode()
        hexdigest = hashlib.sha256(manifest).hexdigest()
        if (self._objects / hexdigest).exists():
            return Artifact(f"sha256:{hexdigest}", total)
        staged = Path(tempfile.mkdtemp(dir=self._tmp, prefix="tree-"))
        try:
            for relative in files:
                target = staged / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / relative, target)
                with target.open("rb") as handle:
                    os.fsync(handle.fileno())
            (staged / MANIFEST_NAME).write_bytes(manifest)
            self._commit(staged, hexdigest)
        finally:
            if staged.exists():
                shutil.rmtree(staged)
        return Artifact(f"sha256:{hexdigest}", total)

    def delete(self, digest: str) -> bool:
        """Removes an artifact (erasure); False when it was not there."""
        try:
            location = self.path(digest)
        except NotFoundError:
            return False
        if location.is_dir():
            shutil.rmtree(location)
        else:
            location.unlink()
        fsync_directory(self._objects)
        return True

    def verify_tree(self, digest: str) -> list[str]:
        """Files of a directory artifact whose bytes no longer match; empty if intact."""
        root = self.path(digest)
        manifest = json.loads((root / MANIFEST_NAME).read_text())
        bad = []
        for relative, entry in manifest["files"].items():
            path = root / relative
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                bad.append(relative)
        return bad
