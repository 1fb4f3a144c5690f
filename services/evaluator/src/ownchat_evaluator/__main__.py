"""Runs the evaluator: ``python -m ownchat_evaluator`` (port 50053 by default)."""

from __future__ import annotations

import torch

from ownchat.artifacts import ArtifactStore
from ownchat.auth import load_or_create_token
from ownchat.config import ClientSettings
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.registry import ModelDirectories
from ownchat.server import ServiceSpec, exit_if_insecure, run_threaded_server
from ownchat_evaluator.config import EvaluatorSettings
from ownchat_evaluator.core import EvaluatorCore
from ownchat_evaluator.lookups import TrainingCurves, ValidationSplits
from ownchat_evaluator.review.core import ReviewQueue
from ownchat_evaluator.review.data_client import DataServiceFeedback
from ownchat_evaluator.review.rpcs import ReviewRpcs
from ownchat_evaluator.review.store import ReviewStore
from ownchat_evaluator.servicer import EvaluatorServicer
from ownchat_evaluator.store import EvalStore


def main() -> None:
    settings = EvaluatorSettings()
    exit_if_insecure(settings)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    token = load_or_create_token(settings.home, settings.token)
    client_settings = ClientSettings(home=settings.home)
    artifacts = ArtifactStore(settings.artifacts_dir)
    store = EvalStore(settings.store_location("evaluator", "evaluator"))
    core = EvaluatorCore(
        store,
        models=ModelDirectories(client_settings, token, artifacts),
        datasets=ValidationSplits(client_settings, token, artifacts),
        options=settings.run_options(),
        gate=settings.gate,
        curves=TrainingCurves(client_settings, token),
    )
    # The review queue keeps its own file (reviews.db), or its own tables and
    # migration history in the evaluator's PostgreSQL database.
    review_store = ReviewStore(settings.store_location("evaluator", "reviews"))
    reviews = ReviewQueue(
        review_store,
        data=DataServiceFeedback(client_settings, token, artifacts),
        lease_seconds=settings.review_lease_seconds,
        reviews_per_item=settings.reviews_per_item,
    )
    # The promotion gate's human win rate comes from the review queue.
    core.set_win_rates(reviews.win_rate)
    core.resume_unfinished()
    spec = ServiceSpec(
        short_name="evaluator",
        full_names=[evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name],
        add_servicers=lambda server: evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(
            EvaluatorServicer(core, ReviewRpcs(reviews)),  # type: ignore[abstract]
            server,
        ),
    )

    def shutdown() -> None:
        core.close()
        store.close()
        review_store.close()

    run_threaded_server(spec, settings, on_shutdown=shutdown)


if __name__ == "__main__":
    main()
