"""`ownchat up` starts services that answer health, and Ctrl-C leaves nothing behind;
`ownchat down` stops what a killed `ownchat up` left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_tree import children_of, processes_with_env, sessions_alive

from ownchat.cli.supervisor import grpc_health

pytestmark = pytest.mark.integration


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not printed; output was:\n{''.join(seen)}")


def test_up_then_ctrl_c_stops_every_process(ownchat_env: dict[str, str], tmp_path: Path) -> None:
    ownchat = Path(sys.executable).with_name("ownchat")
    process = subprocess.Popen(
        [str(ownchat), "up", "--only", "data", "--only", "evaluator"],
        env=ownchat_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = wait_for_line(process, "all services up", timeout=120)
        assert any("ready" in line and "data" in line for line in output)
        sessions = children_of(process.pid)
        assert len(sessions) == 2
        for service in ("DATA", "EVALUATOR"):
            assert grpc_health(ownchat_env[f"OWNCHAT_{service}_ADDRESS"]) == "SERVING"
        process.send_signal(signal.SIGINT)
        remaining, _ = process.communicate(timeout=60)
        assert "all services stopped" in remaining
        assert process.returncode == 0
        assert sessions_alive(sessions) == []
        assert processes_with_env("OWNCHAT_HOME", ownchat_env["OWNCHAT_HOME"]) == []
        assert grpc_health(ownchat_env["OWNCHAT_DATA_ADDRESS"]) == "UNREACHABLE"
    finally:
        if process.poll() is None:
            process.kill()


def test_up_refuses_a_second_start_on_busy_ports(ownchat_env: dict[str, str]) -> None:
    ownchat = Path(sys.executable).with_name("ownchat")
    first = subprocess.Popen(
        [str(ownchat), "up", "--only", "data"],
        env=ownchat_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_line(first, "all services up", timeout=120)
        second = subprocess.run(
            [str(ownchat), "up", "--only", "data"],
            env=ownchat_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "already running: data" in second.stderr
        assert "`ownchat down` stops it" in " ".join(second.stderr.split())  # rich wraps
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)


def start_up(env: dict[str, str], *services: str) -> subprocess.Popen[str]:
    ownchat = Path(sys.executable).with_name("ownchat")
    only = [arg for service in services for arg in ("--only", service)]
    process = subprocess.Popen(
        [str(ownchat), "up", *only],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_line(process, "all services up", timeout=120)
    return process


def ownchat_down(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    ownchat = Path(sys.executable).with_name("ownchat")
    return subprocess.run(
        [str(ownchat), "down", "--grace", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_down_stops_what_a_killed_up_left_running(ownchat_env: dict[str, str]) -> None:
    process = start_up(ownchat_env, "data", "evaluator")
    try:
        sessions = children_of(process.pid)
        process.kill()  # no chance to stop anything: the services live on
        process.communicate(timeout=30)
        assert grpc_health(ownchat_env["OWNCHAT_DATA_ADDRESS"]) == "SERVING"
        down = ownchat_down(ownchat_env)
        assert down.returncode == 0, down.stderr
        assert "stopped data, evaluator" in down.stdout
        assert sessions_alive(sessions) == []
        assert processes_with_env("OWNCHAT_HOME", ownchat_env["OWNCHAT_HOME"]) == []
        assert grpc_health(ownchat_env["OWNCHAT_DATA_ADDRESS"]) == "UNREACHABLE"
        assert list((Path(ownchat_env["OWNCHAT_HOME"]) / "run").glob("up-*")) == []
        again = ownchat_down(ownchat_env)
        assert again.returncode == 0
        assert "nothing was running" in again.stdout
    finally:
        for pid in processes_with_env("OWNCHAT_HOME", ownchat_env["OWNCHAT_HOME"]):
            os.kill(pid, signal.SIGKILL)


def test_down_asks_a_running_up_to_stop(ownchat_env: dict[str, str]) -> None:
    process = start_up(ownchat_env, "data")
    try:
        down = ownchat_down(ownchat_env)
        assert down.returncode == 0, down.stderr
        assert "stopped data" in down.stdout
        remaining, _ = process.communicate(timeout=60)
        assert "all services stopped" in remaining
        assert processes_with_env("OWNCHAT_HOME", ownchat_env["OWNCHAT_HOME"]) == []
    finally:
        if process.poll() is None:
            process.kill()


def test_a_hangup_stops_every_service(ownchat_env: dict[str, str]) -> None:
    """A closed terminal sends SIGHUP to the supervisor alone (the services have their
    own sessions); it stops them as Ctrl-C does."""
    process = start_up(ownchat_env, "data")
    try:
        process.send_signal(signal.SIGHUP)
        remaining, _ = process.communicate(timeout=60)
        assert "all services stopped" in remaining
        assert process.returncode == 0
        assert processes_with_env("OWNCHAT_HOME", ownchat_env["OWNCHAT_HOME"]) == []
    finally:
        if process.poll() is None:
            process.kill()
