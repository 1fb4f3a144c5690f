"""What the CLI's commands share: the client, errors, and output."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ownchat.client import OwnchatClient
from ownchat.data.v1 import data_pb2
from ownchat.errors import describe_rpc_error
from ownchat.trainer.v1 import trainer_pb2

console = Console()
error_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
UPLOAD_CHUNK = 1024 * 1024


def reports_rpc_errors(command: F) -> F:
    """Turns a failed call into a readable message and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except grpc.RpcError as error:
            error_console.print(f"[red]error[/red] {describe_rpc_error(error)}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def client() -> OwnchatClient:
    """A client configured from the environment and ``$OWNCHAT_HOME``."""
    return OwnchatClient.from_settings()


def upload_requests(
    path: Path, header: data_pb2.UploadHeader, progress: Progress | None = None
) -> Iterator[data_pb2.UploadDatasetVersionRequest]:
    """The messages of a streaming upload of one file, advancing a progress bar."""
    yield data_pb2.UploadDatasetVersionRequest(header=header)
    task = progress.add_task("upload", total=path.stat().st_size) if progress else None
    with path.open("rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK):
            if progress is not None and task is not None:
                progress.advance(task, len(chunk))
            yield data_pb2.UploadDatasetVersionRequest(chunk=chunk)


def upload_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    )


def follow_job(ownchat: OwnchatClient, job_id: str) -> trainer_pb2.TrainingJob:
    """Shows a job's progress bar with its loss until it ends; returns the ended job."""
    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("train", total=None, step="", loss="", speed="")
        request = trainer_pb2.StreamTrainingJobEventsRequest(job_id=job_id)
        for response in ownchat.trainer.StreamTrainingJobEvents(request):
            event = response.event
            if event.kind == trainer_pb2.EVENT_KIND_METRICS:
                fields: dict[str, Any] = {"step": f"step {event.step}/{event.total_steps}"}
                if event.HasField("loss"):
                    fields["loss"] = f"loss {event.loss:.3f}"
                if event.HasField("tokens_per_second"):
                    fields["speed"] = f"{event.tokens_per_second:.0f} tok/s"
                progress.update(
                    task, completed=event.step, total=event.total_steps or None, **fields
                )
            elif event.message:
                progress.console.print(f"  {event.message}")
    return ownchat.trainer.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job_id)).job
