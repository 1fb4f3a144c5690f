"""Packing several chat source files into one tar, uploaded as one dataset version.

The data service reads an archive's members by their names (SOURCE_FORMAT_ARCHIVE):
``.jsonl`` chat JSONL, ``.json`` ShareGPT, ``.csv`` CSV transcript, and
``.html``/``.htm``/``.md``/``.markdown`` FAQ pages.

The tar is deterministic (members in the given order, named by their base
names, mtime 0, owner 0, mode 0644, uncompressed): the same files give the same
bytes, so uploading them again gives the same source digest.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

# The names the data service reads inside an archive.
CHAT_SOURCE_SUFFIXES = (".jsonl", ".json", ".csv", ".html", ".htm", ".md", ".markdown")


def check_sources(paths: Sequence[Path]) -> None:
    """Raises ValueError naming what cannot be packed: a name the data service
    would refuse, or two files of the same base name (their members would clash)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if not path.name.lower().endswith(CHAT_SOURCE_SUFFIXES):
            raise ValueError(
                f"{path}: not a chat source; several files must each end in "
                f"{', '.join(CHAT_SOURCE_SUFFIXES)}"
            )
        if path.name in seen:
            raise ValueError(
                f"{seen[path.name]} and {path} have the same name, {path.name}; "
                "rename one (members are named by file name)"
            )
        seen[path.name] = path


def pack_sources(paths: Sequence[Path], target: IO[bytes]) -> None:
    """Writes the files as an uncompressed tar to ``target``; see :func:`check_sources`."""
    check_sources(paths)
    with tarfile.open(fileobj=target, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in paths:
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as handle:
                archive.addfile(info, handle)
