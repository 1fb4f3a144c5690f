"""What ``ownchat up`` started, on disk, so that ``ownchat down`` can stop it later.

The services run in their own sessions, so they outlive a supervisor that is
killed with SIGKILL (or a shell that goes away while it is stopped): nothing
else would ever stop them, and the vLLM engine processes of the serving
service with them. Each supervisor writes ``<home>/run/up-<pid>.json`` with its
own process and each service's, and removes it once it has stopped them.

A process is named by its pid and its start time together, so a pid the
kernel has since given to an unrelated process is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

RUN_DIR = "run"
# Start times are read back from /proc with a clock tick's resolution.
_SAME_START_S = 0.05


class StackRecordError(ValueError):
    """A record that cannot be read."""


@dataclass(frozen=True)
class RecordedProcess:
    """A process by pid and start time (seconds since the epoch, as psutil gives it)."""

    name: str
    pid: int
    started: float

    @classmethod
    def of(cls, name: str, pid: int) -> RecordedProcess:
        return cls(name, pid, psutil.Process(pid).create_time())

    def running(self) -> psutil.Process | None:
        """The process itself while it runs; None once it ended or its pid was reused."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started) > _SAME_START_S:
                return None
            return None if process.status() == psutil.STATUS_ZOMBIE else process
        except psutil.Error:
            return None

    def group(self) -> list[psutil.Process]:
        """Live processes of its process group (it led one), itself included while it runs.

        Members outlive a leader killed alone, as vLLM's engine processes do; they
        started after it, which keeps a group id the kernel has reused out.
        """
        members = []
        for process in psutil.process_iter(["status", "create_time"]):
            try:
                if (
                    os.getpgid(process.pid) == self.pid
                    and process.info["status"] != psutil.STATUS_ZOMBIE
                    and process.info["create_time"] >= self.started - _SAME_START_S
                ):
                    members.append(process)
            except (ProcessLookupError, psutil.Error):
                continue
        return members


@dataclass(frozen=True)
class StackRecord:
    """One ``ownchat up``: its supervisor and the services it started."""

    path: Path
    supervisor: RecordedProcess
    services: tuple[RecordedProcess, ...]

    @property
    def names(self) -> list[str]:
        return [service.name for service in self.services]

    def running(self) -> bool:
        """Whether the supervisor or anything of a service's group still runs."""
        return self.supervisor.running() is not None or any(s.group() for s in self.services)


def write_record(home: Path, supervisor: RecordedProcess, services: list[RecordedProcess]) -> Path:
    """Writes (atomically) the record of a supervisor that has started ``services``."""
    run_dir = home / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"up-{supervisor.pid}.json"
    partial = path.with_suffix(".json.partial")
    body = {"supervisor": asdict(supervisor), "services": [asdict(s) for s in services]}
    partial.write_text(json.dumps(body, indent=2) + "\n")
    partial.replace(path)
    return path


def read_record(path: Path) -> StackRecord:
    try:
        body = json.loads(path.read_text())
        return StackRecord(
            path,
            RecordedProcess(**body["supervisor"]),
            tuple(RecordedProcess(**service) for service in body["services"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StackRecordError(f"{path}: not a stack record ({error})") from None


def records(home: Path) -> tuple[list[StackRecord], list[StackRecordError]]:
    """Every stack recorded under ``home``, and the records that could not be read."""
    found, unreadable = [], []
    for path in sorted((home / RUN_DIR).glob("up-*.json")):
        try:
            found.append(read_record(path))
        except StackRecordError as error:
            unreadable.append(error)
    return found, unreadable


def terminate_then_kill(leaders: Iterable[RecordedProcess], grace: float) -> None:
    """SIGTERM to each running leader (services drain on it), then SIGKILL to whatever
    is left of their process groups after ``grace`` seconds."""
    leaders = list(leaders)
    running = [p for p in (leader.running() for leader in leaders) if p is not None]
    for process in running:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.Error:
            continue
    psutil.wait_procs(running, timeout=grace)
    for leader in leaders:
        members = leader.group()
        for member in members:
            try:
                member.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        psutil.wait_procs(members, timeout=5)


def stop_stack(record: StackRecord, grace: float) -> None:
    """Stops a recorded stack: through its supervisor when that still runs (it stops the
    services in order, as on Ctrl-C), else each service directly; then drops the record."""
    supervisor = record.supervisor.running()
    if supervisor is not None:
        supervisor.send_signal(signal.SIGTERM)
        # The supervisor's own grace per service, and time to kill what is left.
        psutil.wait_procs([supervisor], timeout=grace + 15)
    terminate_then_kill(record.services, grace)
    record.path.unlink(missing_ok=True)
