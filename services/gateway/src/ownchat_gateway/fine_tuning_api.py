"""OpenAI's fine-tuning jobs API over the trainer: a job is a training job.

``POST /v1/fine_tuning/jobs`` checks the training file with the data service,
then creates the job (the ``Idempotency-Key`` header, scoped to the caller,
becomes the trainer's idempotency key). ``GET /v1/fine_tuning/jobs`` lists
jobs newest first (``after``, ``limit``); ``GET .../{id}``, ``POST .../{id}/cancel``,
``.../pause`` and ``.../resume`` act on one; ``GET .../{id}/events`` and
``GET .../{id}/checkpoints`` list its events and checkpoints newest first.
Every path under ``/files`` and ``/fine_tuning`` needs the ``fine_tune`` scope.

The trainer streams a job's events until the job ends; the events list reads
what the stream gives at once and stops when it falls quiet for
:data:`EVENTS_QUIET_SECONDS` (a job that has ended closes the stream itself).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Annotated

import grpc
from fastapi import FastAPI, Header, Query, Request
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from ownchat.errors import describe_rpc_error
from ownchat.trainer.v1 import trainer_pb2
from ownchat_gateway.context import GatewayContext, context_of
from ownchat_gateway.errors import GatewayError, from_rpc_error, invalid_request
from ownchat_gateway.files_api import AfterQuery, data_of
from ownchat_gateway.fine_tuning_protocol import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)
from ownchat_gateway.fine_tuning_translate import (
    CHECKPOINT_PREFIX,
    EVENT_PREFIX,
    checkpoint_object,
    cursor_number,
    event_object,
    job_object,
    not_configured,
    openai_param,
    training_request,
)
from ownchat_gateway.middleware import principal_of, request_id_of
from ownchat_gateway.upstream import TrainerUpstream

# The paths (below /v1) of the files and fine-tuning APIs.
FINE_TUNING_PREFIXES = ("/files", "/fine_tuning")
EVENTS_QUIET_SECONDS = 0.5
MAX_LIST_LIMIT = 1000
# Jobs are paged from the trainer this many at a time while looking for a cursor.
_JOB_PAGE = 100
_MAX_JOB_PAGES = 100


def is_fine_tuning_path(path: str) -> bool:
    """Whether a path (below the app's mount) belongs to the files or fine-tuning API."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in FINE_TUNING_PREFIXES)


def trainer_of(context: GatewayContext) -> TrainerUpstream:
    """The trainer's client; 503 when this gateway has none."""
    if context.trainer is None:
        raise not_configured("trainer")
    return context.trainer


def _resource_type(error: grpc.RpcError) -> str:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            return info.resource_type
    return ""


def trainer_error(error: grpc.RpcError, request_id: str) -> GatewayError:
    """The answer for a failed trainer call, with OpenAI's parameter names."""
    mapped = from_rpc_error(error, request_id, service="trainer")
    description = describe_rpc_error(error)
    if description.code == grpc.StatusCode.NOT_FOUND:
        return replace(mapped, param="fine_tuning_job_id")
    if description.code != grpc.StatusCode.INVALID_ARGUMENT or not description.violations:
        return mapped
    details = "; ".join(f"{openai_param(v.field)}: {v.description}" for v in description.violations)
    return replace(
        mapped,
        message=f"{description.message} ({details})",
        param=openai_param(description.violations[0].field),
    )


def _create_error(error: grpc.RpcError, request_id: str) -> GatewayError:
    """A refused job: an unknown model or file is the request's fault (400), as OpenAI says."""
    if describe_rpc_error(error).code != grpc.StatusCode.NOT_FOUND:
        return trainer_error(error, request_id)
    message = describe_rpc_error(error).message
    if _resource_type(error) == "dataset version":
        return invalid_request(f"invalid training_file: {message}", param="training_file")
    return GatewayError(
        400,
        f"the model is not available for fine-tuning: {message}",
        "invalid_request_error",
        code="model_not_available",
        param="model",
    )


async def _training_file_error(
    context: GatewayContext, file_id: str, request_id: str
) -> GatewayError | None:
    """Why a training file cannot be trained on, or None."""
    try:
        version = await data_of(context).get_dataset_version(file_id, request_id)
    except grpc.RpcError as error:
        if describe_rpc_error(error).code == grpc.StatusCode.NOT_FOUND:
            return GatewayError(
                400,
                f"invalid training_file: no file {file_id!r} (upload it with POST /v1/files)",
                "invalid_request_error",
                code="invalid_training_file",
                param="training_file",
            )
        return from_rpc_error(error, request_id, service="data")
    if version.erased_by:
        return GatewayError(
            400,
            f"invalid training_file: {file_id!r} was erased ({version.erased_by})",
            "invalid_request_error",
            code="invalid_training_file",
            param="training_file",
        )
    return None


async def _jobs_after(
    trainer: TrainerUpstream, after: str | None, limit: int, request_id: str
) -> tuple[list[trainer_pb2.TrainingJob], bool]:
    """Up to ``limit`` jobs after the job ``after`` (newest first), and whether more follow."""
    found = after is None
    jobs: list[trainer_pb2.TrainingJob] = []
    token = ""
    for _ in range(_MAX_JOB_PAGES):
        page = await trainer.list_jobs(_JOB_PAGE, token, request_id)
        for job in page.jobs:
            if found:
                jobs.append(job)
            elif job.id == after:
                found = True
        token = page.next_page_token
        if len(jobs) > limit or not token:
            break
    return jobs[:limit], len(jobs) > limit


async def _read_events(
    trainer: TrainerUpstream, job_id: str, request_id: str
) -> list[trainer_pb2.JobEvent]:
    """The job's events so far, oldest first."""
    call = trainer.stream_events(job_id, request_id)
    events: list[trainer_pb2.JobEvent] = []
    try:
        # The first event (every job has one) comes within the call's deadline.
        response = await call.read()
        while response is not aio.EOF:
            events.append(response.event)
            try:
                response = await asyncio.wait_for(call.read(), EVENTS_QUIET_SECONDS)
            except TimeoutError:
                break
    finally:
        call.cancel()
    return events


def add_fine_tuning_routes(app: FastAPI) -> None:
    """Adds ``/fine_tuning/jobs`` to the OpenAI-compatible app."""

    @app.post("/fine_tuning/jobs", response_model=FineTuningJob)
    async def create_job(
        body: FineTuningJobCreate,
        request: Request,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Retries with the same key (per API key) create one job.",
            ),
        ] = None,
    ) -> FineTuningJob:
        """Creates a fine-tuning job: supervised (full) or DPO."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        trainer = trainer_of(context)
        principal = principal_of(request.scope)
        message = training_request(
            body, idempotency_key or "", principal.id if principal is not None else ""
        )
        refused = await _training_file_error(context, body.training_file, request_id)
        if refused is not None:
            raise refused
        try:
            job = await trainer.create_job(message, request_id)
        except grpc.RpcError as error:
            raise _create_error(error, request_id) from None
        return job_object(job)

    @app.get("/fine_tuning/jobs", response_model=FineTuningJobList)
    async def list_jobs(
        request: Request,
        after: AfterQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
    ) -> FineTuningJobList:
        """Jobs, newest first."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            jobs, more = await _jobs_after(trainer_of(context), after, limit, request_id)
        except grpc.RpcError as error:
            raise trainer_error(error, request_id) from None
        return FineTuningJobList(data=[job_object(job) for job in jobs], has_more=more)

    @app.get("/fine_tuning/jobs/{fine_tuning_job_id}", response_model=FineTuningJob)
    async def retrieve_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
        """One job."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            job = await trainer_of(context).get_job(fine_tuning_job_id, request_id)
        except grpc.RpcError as error:
            raise trainer_error(error, request_id) from None
        return job_object(job)

    @app.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
    async def cancel_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
        """Cancels a job that has not ended; its last checkpoint is kept."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            job = await trainer_of(context).cancel_job(fine_tuning_job_id, request_id)
        except grpc.RpcError as error:
            raise trainer_error(error, request_id) from None
        return job_object(job)

    @app.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
    async def pause_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
        """Pauses a running job at its next checkpoint."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            job = await trainer_of(context).pause_job(fine_tuning_job_id, request_id)
        except grpc.RpcError as error:
            raise trainer_error(error, request_id) from None
        return job_object(job)

    @app.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
    async def resume_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
        """Resumes a paused job from its last checkpoint."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        try:
            job = await trainer_of(context).resume_job(fine_tuning_job_id, request_id)
        except grpc.RpcError as error:
            raise trainer_error(error, request_id) from None
        return job_object(job)

    @app.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response_model=FineTuningJobEventList)
    async def list_events(
        fine_tuning_job_id: str,
        request: Request,
        after: AfterQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
    ) -> FineTuningJobEventList:
        """A job's events, newest first; metrics events carry step and losses in ``data``."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        below = cursor_number(after, EVENT_PREFIX, fine_tuning_job_id, "after")
        try:
            events = await _read_events(trainer_of(context), fine_tuning_job_id, request_id)
        except grpc.RpcError as error:
            raise trainer_error(error, request_id) from None
        newest_first = [e for e in reversed(events) if below is None or e.sequence < below]
        return FineTuningJobEventList(
            data=[event_object(fine_tuning_job_id, e) for e in newest_first[:limit]],
            has_more=len(newest_first) > limit,
        )

    @app.get(
        "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        response_model=FineTuningJobCheckpointList,
    )
    async def list_checkpoints(
        fine_tuning_job_id: str,
        request: Request,
        after: AfterQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 10,
    ) -> FineTuningJobCheckpointList:
        """A job's checkpoints with their losses, newest first."""
        context = context_of(request)
        request_id = request_id_of(request.scope)
        trainer = trainer_of(context)
        below = cursor_number(after, CHECKPOINT_PREFIX, fine_tuning_job_id, "after")
        try:
            job = await trainer.get_job(fine_tuning_job_id, request_id)
            checkpoints = await trainer.list_checkpoints(fine_tuning_job_id, request_id)
        except grpc.RpcError as error:
            raise trainer_error(error, request_id) from None
        newest_first = [c for c in reversed(checkpoints) if below is None or c.step < below]
        page = [checkpoint_object(job, c) for c in newest_first[:limit]]
        return FineTuningJobCheckpointList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(newest_first) > limit,
        )
