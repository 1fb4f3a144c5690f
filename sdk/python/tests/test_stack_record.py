"""A stack's record finds its processes by pid and start time, and stopping takes the
whole process group, also the members a leader killed alone left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ownchat.cli.stack_record import (
    RecordedProcess,
    StackRecordError,
    read_record,
    records,
    stop_stack,
    write_record,
)

# A leader in its own session that starts a member of its group (as the serving
# service starts vLLM's engine core), prints the member's pid, and then waits.
LEADER = """
import subprocess, sys, time
member = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(member.pid, flush=True)
time.sleep(300)
"""
# A leader that ignores SIGTERM, as a service stuck in a drain would.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + (
    "print(0, flush=True); time.sleep(300)"
)


def start_leader(code: str = LEADER) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    member = int(process.stdout.readline())
    return process, member


@pytest.fixture
def leaders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_record_reads_back_and_names_running_processes(tmp_path: Path) -> None:
    me = RecordedProcess.of("supervisor", os.getpid())
    path = write_record(tmp_path, me, [me])
    record = read_record(path)
    assert record.supervisor == me
    assert record.running()
    assert record.supervisor.running() is not None


def test_a_reused_pid_is_not_taken_for_the_recorded_process() -> None:
    me = RecordedProcess.of("supervisor", os.getpid())
    earlier = RecordedProcess(me.name, me.pid, me.started - 3600)
    assert earlier.running() is None
    # Above the largest pid Linux hands out (pid_max is at most 2**22).
    assert RecordedProcess("gone", 2**22 + 1, time.time()).running() is None


def test_unreadable_records_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "up-1.json").write_text('{"supervisor": {"name": "x"')
    (tmp_path / "run" / "up-2.json").write_text('{"supervisor": 3, "services": []}')
    found, unreadable = records(tmp_path)
    assert found == []
    assert len(unreadable) == 2
    assert all("not a stack record" in str(error) for error in unreadable)
    with pytest.raises(StackRecordError):
        read_record(tmp_path / "run" / "up-1.json")


def test_stopping_takes_the_members_a_killed_leader_left(
    tmp_path: Path, leaders: list[subprocess.Popen[str]]
) -> None:
    leader, member = start_leader()
    leaders.append(leader)
    gone_supervisor = RecordedProcess("supervisor", 2**22 + 1, time.time())
    path = write_record(tmp_path, gone_supervisor, [RecordedProcess.of("serving", leader.pid)])
    leader.kill()  # SIGKILL to the leader alone: its member lives on, as an engine core does
    leader.wait(timeout=10)
    assert alive(member)
    record = read_record(path)
    assert record.running()
    stop_stack(record, grace=5)
    assert not alive(member)
    assert not path.exists()


def test_stopping_kills_a_leader_that_ignores_sigterm_after_the_grace(
    tmp_path: Path, leaders: list[subprocess.Popen[str]]
) -> None:
    leader, _ = start_leader(STUBBORN)
    leaders.append(leader)
    gone_supervisor = RecordedProcess("supervisor", 2**22 + 1, time.time())
    path = write_record(tmp_path, gone_supervisor, [RecordedProcess.of("data", leader.pid)])
    began = time.monotonic()
    stop_stack(read_record(path), grace=1)
    # It sleeps for minutes and ignores SIGTERM: only the SIGKILL after the grace ends it.
    assert not alive(leader.pid)
    assert time.monotonic() - began >= 1
