"""Translation between the protobuf messages and the core's plain types."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status

from ownchat.common.v1 import common_pb2
from ownchat.errors import InvalidArgumentError, describe_rpc_error
from ownchat.serving.v1 import serving_pb2
from ownchat_serving.generation import check_prompt_fits
from ownchat_serving.servicer import deploy_spec, deployment_to_proto, generate_input
from ownchat_serving.store import Deployment, DeploymentState, EngineKind


def test_unset_sampling_fields_stay_unset() -> None:
    request = serving_pb2.GenerateRequest(
        messages=[
            common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="Be brief."),
            common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hi"),
        ],
        sampling=serving_pb2.SamplingParams(temperature=0.0, stop=["\n"]),
        model_id="m",
        request_id="r1",
    )
    plain = generate_input(request)
    assert [(t.role, t.content) for t in plain.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    # An explicit 0 is greedy, not "unset".
    assert plain.sampling.temperature == 0.0
    assert plain.sampling.top_p is None and plain.sampling.max_tokens is None
    assert plain.sampling.seed is None and plain.sampling.stop == ("\n",)
    assert (plain.model_id, plain.request_id) == ("m", "r1")


def test_a_raw_prompt_reaches_the_core_as_it_is() -> None:
    request = serving_pb2.GenerateRequest(prompt="  Once upon a time\n", request_id="r2")
    plain = generate_input(request)
    assert plain.prompt == "  Once upon a time\n" and list(plain.messages) == []
    assert generate_input(serving_pb2.GenerateRequest()).prompt == ""


def test_a_prompt_over_the_context_carries_its_reason_to_the_caller() -> None:
    """What the error interceptor sends for it is read back by ``describe_rpc_error``."""
    with pytest.raises(InvalidArgumentError) as caught:
        check_prompt_fits(300, 256, "prompt")
    status = rpc_status.to_status(caught.value.to_status())
    error = aio.AioRpcError(
        status.code, aio.Metadata(), aio.Metadata(*status.trailing_metadata), status.details
    )
    description = describe_rpc_error(error)
    assert description.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in description.violations] == ["prompt"]
    assert description.error_info is not None
    assert (description.error_info.reason, description.error_info.domain) == (
        "CONTEXT_LENGTH_EXCEEDED",
        "ownchat.serving.v1",
    )
    assert description.error_info.metadata == {"prompt_tokens": "300", "max_model_len": "256"}


def test_an_unspecified_role_reaches_validation() -> None:
    request = serving_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(content="x")])
    assert generate_input(request).messages[0].role not in ("system", "user", "assistant")


def test_deploy_engines() -> None:
    assert deploy_spec(serving_pb2.DeployRequest(model_id="m")).engine is None
    vllm = serving_pb2.DeployRequest(model_id="m", engine=serving_pb2.ENGINE_VLLM)
    assert deploy_spec(vllm).engine is EngineKind.VLLM
    with pytest.raises(InvalidArgumentError):
        deploy_spec(serving_pb2.DeployRequest(model_id="m", engine=42))  # type: ignore[arg-type]


def test_deployments_show_their_traffic_canary_share_and_restarts() -> None:
    base = Deployment(
        "dep_1", "m", EngineKind.VLLM, DeploymentState.LIVE, "alice", 1.5, traffic_percent=90
    )
    live = deployment_to_proto(base)
    assert live.traffic_percent == 90 and live.canary_percent == 0
    assert live.state == serving_pb2.DEPLOYMENT_STATE_LIVE
    assert live.engine == serving_pb2.ENGINE_VLLM
    assert live.create_time.seconds == 1 and live.create_time.nanos == 500_000_000
    canary = Deployment(
        "dep_2",
        "m2",
        EngineKind.TRANSFORMERS,
        DeploymentState.LIVE,
        "bob",
        2.0,
        canary_percent=10,
        traffic_percent=10,
        restarts=2,
    )
    proto = deployment_to_proto(canary)
    assert (proto.traffic_percent, proto.canary_percent, proto.restart_count) == (10, 10, 2)
    failed = Deployment(
        "dep_3", "m", EngineKind.VLLM, DeploymentState.FAILED, "bob", 2.0, error="boom"
    )
    proto = deployment_to_proto(failed)
    assert proto.traffic_percent == 0 and proto.error == "boom"
    assert proto.state == serving_pb2.DEPLOYMENT_STATE_FAILED


def test_the_call_deadline_and_conversation_reach_the_core() -> None:
    request = serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hi")],
        conversation_id="c-1",
    )
    before = time.monotonic()
    plain = generate_input(request, time_remaining=2.0)
    assert plain.conversation_id == "c-1"
    assert plain.deadline is not None and before + 2.0 <= plain.deadline <= time.monotonic() + 2.0
    assert generate_input(request).deadline is None


def test_a_canary_share_passes_through() -> None:
    spec = deploy_spec(serving_pb2.DeployRequest(model_id="m", canary_percent=10))
    assert spec.canary_percent == 10
