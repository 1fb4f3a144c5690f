"""Finding the processes a test started, to prove none outlives it."""

from __future__ import annotations

from pathlib import Path

import psutil


def sessions_alive(session_ids: set[int]) -> list[int]:
    """Processes still alive in any of these sessions (zombies excluded)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if session in session_ids and state != "Z":
            alive.append(int(entry.name))
    return alive


def children_of(pid: int) -> set[int]:
    """Direct children of a process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def processes_with_env(key: str, value: str) -> list[int]:
    """Live processes whose environment holds ``key=value``.

    Every descendant inherits the environment, also one that left its parent's
    session, so this finds what a session-based search would miss.
    """
    wanted = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text()
        except OSError:
            continue
        if state[state.rindex(")") + 2] == "Z":
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def vllm_processes() -> list[psutil.Process]:
    """This process's running vLLM children (engine core, workers); exited ones don't count."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "VLLM" in child.name():
                found.append(child)
        except psutil.Error:
            continue
    return found
