"""Finding and signalling a worker's processes, from /proc.

torchrun starts each rank in a session of its own, so a signal to torchrun's
process group would not reach them: a worker's processes are found by
parentage instead. Where there is no /proc (not Linux) only the process the
service started is seen.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _processes() -> list[Path]:
    return list(Path("/proc").glob("[0-9]*"))


def children_of() -> dict[int, list[int]]:
    """Every process's children by parent id."""
    children: dict[int, list[int]] = {}
    for entry in _processes():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, parents first."""
    children = children_of()
    tree, index = [pid], 0
    while index < len(tree):
        tree.extend(children.get(tree[index], []))
        index += 1
    return tree


def processes_with_argument(argument: str) -> list[int]:
    """Processes (other than this one) with ``argument`` on their command line, and
    their descendants."""
    wanted = argument.encode()
    found: list[int] = []
    for entry in _processes():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        pid = int(entry.name)
        if pid != os.getpid() and wanted in command.split(b"\0") and pid not in found:
            found.extend(p for p in process_tree(pid) if p not in found)
    return found


def send(pids: list[int], number: signal.Signals) -> None:
    """Sends a signal to each process that still exists."""
    for pid in pids:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


def kill_and_wait(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILLs the processes and waits (up to ``timeout``) until they are gone."""
    send(pids, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        # A zombie (killed, not yet reaped by its parent) counts as gone.
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2 :].split()[0] != "Z"


def exit_description(status: int | None) -> str:
    """How a process ended, from its ``Popen`` return code, as words."""
    if status is None:
        return "did not start"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"
