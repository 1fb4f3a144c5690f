"""Resolves model ids through the trainer service's model registry (GetModel)."""

from __future__ import annotations

import grpc
from grpc import aio

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.client import CHANNEL_OPTIONS, channel_credentials
from ownchat.config import ClientSettings
from ownchat.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from ownchat_serving.resolver import ModelKind, ResolvedModel

_KINDS = {
    trainer_pb2.MODEL_KIND_BASE: ModelKind.BASE,
    trainer_pb2.MODEL_KIND_FULL: ModelKind.FULL,
    trainer_pb2.MODEL_KIND_LORA_ADAPTER: ModelKind.LORA_ADAPTER,
}


class TrainerResolver:
    """A :data:`~ownchat_serving.resolver.ModelResolver` backed by the trainer over gRPC."""

    def __init__(self, settings: ClientSettings, token: str, timeout_seconds: float) -> None:
        # GetModel of a base model not yet imported converts it first: allow minutes.
        self._timeout = timeout_seconds
        self._address = settings.trainer_address
        self._metadata = ((AUTHORIZATION_KEY, bearer(token)),)
        self._credentials = channel_credentials(settings)
        # The channel is made on first use: it binds to the running event loop.
        self._channel: aio.Channel | None = None

    def _stub(self) -> trainer_pb2_grpc.TrainerServiceStub:
        if self._channel is None:
            if self._credentials is None:
                self._channel = aio.insecure_channel(self._address, options=CHANNEL_OPTIONS)
            else:
                self._channel = aio.secure_channel(
                    self._address, self._credentials, options=CHANNEL_OPTIONS
                )
        return trainer_pb2_grpc.TrainerServiceStub(self._channel)

    async def _get(self, model_id: str) -> trainer_pb2.Model:
        try:
            response = await self._stub().GetModel(
                trainer_pb2.GetModelRequest(model_id=model_id),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError("model", model_id) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgumentError(
                    f"the model registry refused {model_id!r}: {error.details()}",
                    [FieldViolation("model_id", error.details() or "invalid")],
                ) from None
            raise UnavailableError(
                f"the model registry (trainer at {self._address}) could not resolve "
                f"{model_id!r}: {code.name}: {error.details()}"
            ) from None
        model: trainer_pb2.Model = response.model
        return model

    async def __call__(self, model_id: str) -> ResolvedModel:
        model = await self._get(model_id)
        kind = _KINDS.get(model.kind, ModelKind.UNKNOWN)
        blocked, base_id, base_digest = model.blocked_reason, "", ""
        if kind is ModelKind.LORA_ADAPTER and model.base_model:
            base = await self._get(model.base_model)
            base_id, base_digest = base.id or model.base_model, base.artifact.digest
            if not blocked and base.blocked_reason:
                blocked = f"its base model {base_id!r} is blocked: {base.blocked_reason}"
        return ResolvedModel(
            model_id=model.id or model_id,
            artifact_digest=model.artifact.digest,
            kind=kind,
            blocked_reason=blocked,
            base_model_id=base_id,
            base_artifact_digest=base_digest,
        )

    async def close(self) -> None:
        """Closes the channel to the trainer."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
