"""``ownchat data erase`` beyond the datasets: the gateway's captured chats, the
evaluator's review queue and its evaluation runs' per-sample outputs.

A value erased from a dataset could still sit in a live chat the gateway captured,
in a review item (the scrubber misses what it cannot recognise), or in what an
evaluation run kept of a sample and the model's reply to it, so the same values
are erased there too, by the same rule (:mod:`ownchat.erasure`). The
gateway goes first: review items made from its chats hold the chats' text, and the
evaluator's erasure then finds them. A place that cannot be reached is named, and
the command fails, so that the operator runs it again once it is up; erasing
again is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from ownchat.cli.common import console, error_console
from ownchat.cli.gateway_admin import GatewayCallError, admin_call
from ownchat.client import OwnchatClient
from ownchat.errors import describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2

CAPTURED_CHATS_ERASE_PATH = "captured-chats:erase"
Response = TypeVar("Response")


@dataclass(frozen=True)
class ErasedElsewhere:
    """What the erasure removed outside the datasets; None where it could not run."""

    captured_chats: int | None
    review_items: int | None
    eval_samples: int | None

    @property
    def complete(self) -> bool:
        return None not in (self.captured_chats, self.review_items, self.eval_samples)


def erase_captured_and_reviews(ownchat: OwnchatClient, values: Sequence[str]) -> ErasedElsewhere:
    """Erases the values from captured chats, the review queue and the evaluation
    runs' samples, and says so."""
    captured = _erase_captured_chats(values)
    reviews = _erase_review_data(ownchat, values)
    samples = _erase_eval_samples(ownchat, values)
    return ErasedElsewhere(captured, reviews, samples)


def _erase_captured_chats(values: Sequence[str]) -> int | None:
    try:
        answer = admin_call("POST", CAPTURED_CHATS_ERASE_PATH, {"values": list(values)})
    except GatewayCallError as error:
        error_console.print(
            f"[red]error[/red] captured chats not erased: {error}; "
            "run the same erase again once the gateway is up"
        )
        return None
    chats = len(answer.get("erasedResponseIds", []))
    feedback = int(answer.get("erasedFeedback", 0))
    console.print(f"removed {chats} captured chat(s) and {feedback} feedback entry(ies)")
    return chats


def _erase_review_data(ownchat: OwnchatClient, values: Sequence[str]) -> int | None:
    response = _evaluator_erase(
        "review queue",
        lambda: ownchat.evaluator.EraseReviewData(
            evaluator_pb2.EraseReviewDataRequest(values=values), timeout=600
        ),
    )
    if response is None:
        return None
    console.print(
        f"removed {len(response.erased_item_ids)} review item(s) and "
        f"{response.erased_reviews} review(s)"
    )
    return len(response.erased_item_ids)


def _erase_eval_samples(ownchat: OwnchatClient, values: Sequence[str]) -> int | None:
    response = _evaluator_erase(
        "evaluation samples",
        lambda: ownchat.evaluator.EraseEvalSamples(
            evaluator_pb2.EraseEvalSamplesRequest(values=values), timeout=600
        ),
    )
    if response is None:
        return None
    console.print(
        f"removed {response.erased_samples} evaluation sample output(s) from "
        f"{len(response.eval_run_ids)} run(s)"
    )
    return int(response.erased_samples)


def _evaluator_erase(place: str, call: Callable[[], Response]) -> Response | None:
    """The evaluator's answer, or None after saying why the place was not erased."""
    try:
        return call()
    except grpc.RpcError as error:
        error_console.print(
            f"[red]error[/red] {place} not erased: {describe_rpc_error(error)}; "
            "run the same erase again once the evaluator is up"
        )
        return None
