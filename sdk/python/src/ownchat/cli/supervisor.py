"""Starting, watching and stopping the five services as child processes.

Each service runs in its own session (process group), so Ctrl-C in the
terminal reaches only the supervisor, which then stops the services in order:
SIGTERM to each (they drain), then SIGKILL to whatever is left of each group
(engine processes included), so nothing outlives ``ownchat up``. What it
started is recorded under ``<home>/run`` (see :mod:`.stack_record`), so that
``ownchat down`` stops the services even when the supervisor itself was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ownchat.cli.stack_record import (
    RecordedProcess,
    records,
    terminate_then_kill,
    write_record,
)
from ownchat.client import channel_credentials
from ownchat.config import ClientSettings

SERVICE_MODULES = {
    "data": "ownchat_data",
    "trainer": "ownchat_trainer",
    "evaluator": "ownchat_evaluator",
    "serving": "ownchat_serving",
    "gateway": "ownchat_gateway",
}
GRPC_SERVICES = ("data", "trainer", "evaluator", "serving")


class StartupError(RuntimeError):
    """A service exited or did not become healthy in time."""


def stop_on_signals() -> None:
    """Makes SIGTERM and SIGHUP stop the stack as Ctrl-C does (a KeyboardInterrupt).

    SIGINT too when a shell started this as a background job (which ignores SIGINT,
    and Python keeps it ignored). SIGHUP matters because the services are in their
    own sessions: a closed terminal would otherwise end the supervisor alone and
    leave them running.
    """

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def busy_message(busy: list[str], home: Path) -> str:
    """Why services cannot start: who holds their ports, and how to stop it."""
    left = [r for r in records(home)[0] if r.running() and set(r.names) & set(busy)]
    if left:
        pids = ", ".join(str(r.supervisor.pid) for r in left)
        return (
            f"already running: {', '.join(busy)}, started by `ownchat up` (pid {pids}); "
            "`ownchat down` stops it"
        )
    return f"already running: {', '.join(busy)} (stop them first, or use `ownchat status`)"


@dataclass
class ServiceProcess:
    """One running service."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Taken at once: a service that exits is reaped, and its start time is gone with it.
    recorded: RecordedProcess

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def grpc_health(
    address: str, timeout: float = 1.0, credentials: grpc.ChannelCredentials | None = None
) -> str:
    """The status of a gRPC server's health check: SERVING, NOT_SERVING, or UNREACHABLE.

    Over TLS when ``credentials`` are given (``OWNCHAT_TLS_*``: a cluster's services)."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def http_ready(url: str, timeout: float = 1.0) -> str:
    """SERVING when the gateway's ``/readyz`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as response:
            return "SERVING" if response.status == 200 else "NOT_SERVING"
    except (urllib.error.URLError, OSError):
        return "UNREACHABLE"


def service_status(name: str, settings: ClientSettings) -> str:
    """The health of one service by its short name."""
    if name == "gateway":
        return http_ready(settings.gateway_url)
    return grpc_health(settings.address(name), credentials=channel_credentials(settings))


class Supervisor:
    """Runs services as child processes in their own process groups."""

    def __init__(self, settings: ClientSettings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = {**os.environ, **(env or {}), "OWNCHAT_HOME": str(settings.home)}
        self.processes: list[ServiceProcess] = []
        self.log_dir = settings.home / "logs"
        self.record_path: Path | None = None

    def start(self, names: list[str]) -> None:
        """Starts services; refuses when something already answers on a service's port."""
        busy = [n for n in names if service_status(n, self.settings) != "UNREACHABLE"]
        if busy:
            raise StartupError(busy_message(busy, self.settings.home))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            log_path = self.log_dir / f"{name}.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", SERVICE_MODULES[name]],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            recorded = RecordedProcess.of(name, process.pid)
            self.processes.append(ServiceProcess(name, process, log_path, recorded))
            # Rewritten after each start: a supervisor killed halfway leaves the ones started.
            self.record_path = write_record(
                self.settings.home,
                RecordedProcess.of("supervisor", os.getpid()),
                [p.recorded for p in self.processes],
            )

    def wait_healthy(self, timeout: float, on_ready: object = None) -> None:
        """Waits until every started service is healthy; raises if one dies or is late."""
        pending = {p.name: p for p in self.processes}
        deadline = time.monotonic() + timeout
        while pending:
            for name, service in list(pending.items()):
                if service.process.poll() is not None:
                    raise StartupError(
                        f"{name} exited with code {service.process.returncode}; "
                        f"its log ({service.log_path}) ends with:\n{service.log_tail()}"
                    )
                if service_status(name, self.settings) == "SERVING":
                    del pending[name]
                    if callable(on_ready):
                        on_ready(name)
            if time.monotonic() > deadline:
                raise StartupError(f"not healthy after {timeout:.0f} s: {', '.join(pending)}")
            time.sleep(0.25)

    def stop(self, grace: float = 15.0) -> None:
        """Stops every service: SIGTERM, wait, then SIGKILL their whole process groups."""
        terminate_then_kill([p.recorded for p in self.processes], grace)
        for service in self.processes:
            # Reaped already by the wait above; this only settles the Popen object.
            service.process.wait(timeout=5)
        self.processes.clear()
        if self.record_path is not None:
            self.record_path.unlink(missing_ok=True)
            self.record_path = None
