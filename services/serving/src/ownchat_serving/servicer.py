"""ServingService over grpc.aio: protobuf in, plain Python to the core, protobuf out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ownchat.errors import FieldViolation, InvalidArgumentError, OwnchatError
from ownchat.paging import next_page_token, page_window
from ownchat.roles import NAME_BY_ROLE
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat.timestamps import to_timestamp
from ownchat_serving.core import DeploySpec, ServingCore
from ownchat_serving.generation import ChatTurn, FinishReason, GenerateInput, Sampling
from ownchat_serving.replies import DeadlineExceededError
from ownchat_serving.store import Deployment, DeploymentState, EngineKind

_ENGINES_IN = {
    serving_pb2.ENGINE_UNSPECIFIED: None,
    serving_pb2.ENGINE_VLLM: EngineKind.VLLM,
    serving_pb2.ENGINE_ONNXRUNTIME: EngineKind.ONNXRUNTIME,
    serving_pb2.ENGINE_TRANSFORMERS: EngineKind.TRANSFORMERS,
}
_ENGINES_OUT = {
    EngineKind.VLLM: serving_pb2.ENGINE_VLLM,
    EngineKind.ONNXRUNTIME: serving_pb2.ENGINE_ONNXRUNTIME,
    EngineKind.TRANSFORMERS: serving_pb2.ENGINE_TRANSFORMERS,
}
_STATES = {
    DeploymentState.LOADING: serving_pb2.DEPLOYMENT_STATE_LOADING,
    DeploymentState.LIVE: serving_pb2.DEPLOYMENT_STATE_LIVE,
    DeploymentState.RETIRED: serving_pb2.DEPLOYMENT_STATE_RETIRED,
    DeploymentState.FAILED: serving_pb2.DEPLOYMENT_STATE_FAILED,
}
_FINISH = {
    FinishReason.STOP: serving_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: serving_pb2.FINISH_REASON_LENGTH,
}


def deployment_to_proto(deployment: Deployment) -> serving_pb2.Deployment:
    """A deployment as the API shows it."""
    return serving_pb2.Deployment(
        id=deployment.id,
        model_id=deployment.model_id,
        engine=_ENGINES_OUT[deployment.engine],
        state=_STATES[deployment.state],
        traffic_percent=deployment.traffic_percent,
        deployed_by=deployment.deployed_by,
        create_time=to_timestamp(deployment.create_time),
        error=deployment.error,
        canary_percent=deployment.canary_percent,
        restart_count=deployment.restarts,
    )


def deploy_spec(request: serving_pb2.DeployRequest) -> DeploySpec:
    """The core's view of a Deploy request."""
    if request.engine not in _ENGINES_IN:
        raise InvalidArgumentError(
            "invalid deploy request", [FieldViolation("engine", "unknown engine")]
        )
    return DeploySpec(
        model_id=request.model_id,
        engine=_ENGINES_IN[request.engine],
        canary_percent=request.canary_percent,
        deployed_by=request.deployed_by,
    )


class CallDeadlineExceededError(OwnchatError):
    """The call's deadline passed before the reply was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def generate_input(
    request: serving_pb2.GenerateRequest, time_remaining: float | None = None
) -> GenerateInput:
    """The core's view of a Generate request; an unknown role is left for validation.

    ``time_remaining`` is the call's, in seconds (None without a deadline).
    """
    sampling = request.sampling
    return GenerateInput(
        messages=[
            ChatTurn(role=NAME_BY_ROLE.get(m.role, "unspecified"), content=m.content)
            for m in request.messages
        ],
        sampling=Sampling(
            temperature=sampling.temperature if sampling.HasField("temperature") else None,
            top_p=sampling.top_p if sampling.HasField("top_p") else None,
            max_tokens=sampling.max_tokens if sampling.HasField("max_tokens") else None,
            stop=tuple(sampling.stop),
            seed=sampling.seed if sampling.HasField("seed") else None,
        ),
        model_id=request.model_id,
        request_id=request.request_id,
        conversation_id=request.conversation_id,
        deadline=None if time_remaining is None else time.monotonic() + time_remaining,
        prompt=request.prompt,
    )


class ServingServicer(serving_pb2_grpc.ServingServiceServicer):
    """Translates ServingService calls for :class:`ServingCore`."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core

    async def Deploy(
        self, request: serving_pb2.DeployRequest, context: Any
    ) -> serving_pb2.DeployResponse:
        deployment = await self._core.deploy(deploy_spec(request))
        return serving_pb2.DeployResponse(deployment=deployment_to_proto(deployment))

    async def Rollback(
        self, request: serving_pb2.RollbackRequest, context: Any
    ) -> serving_pb2.RollbackResponse:
        deployment = await self._core.rollback(request.deployed_by)
        return serving_pb2.RollbackResponse(deployment=deployment_to_proto(deployment))

    async def ListDeployments(
        self, request: serving_pb2.ListDeploymentsRequest, context: Any
    ) -> serving_pb2.ListDeploymentsResponse:
        limit, offset = page_window(request.page_size, request.page_token)
        deployments = self._core.list_deployments(limit, offset)
        return serving_pb2.ListDeploymentsResponse(
            deployments=[deployment_to_proto(d) for d in deployments],
            next_page_token=next_page_token(limit, offset, len(deployments)),
        )

    async def Generate(  # type: ignore[override]
        self, request: serving_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[serving_pb2.GenerateResponse]:
        try:
            async for chunk in self._core.generate(
                generate_input(request, context.time_remaining())
            ):
                response = serving_pb2.GenerateResponse(text=chunk.text, model_id=chunk.model_id)
                if chunk.finish_reason is not None:
                    response.finish_reason = _FINISH[chunk.finish_reason]
                    response.usage.prompt_tokens = chunk.prompt_tokens
                    response.usage.completion_tokens = chunk.completion_tokens
                yield response
        except DeadlineExceededError as error:
            raise CallDeadlineExceededError(str(error)) from error
