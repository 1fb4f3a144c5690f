"""The gateway's gRPC clients (grpc.aio) of the serving, evaluator, data and trainer
services.

Every call carries the bearer token, the request id and a deadline. A channel
is opened on its first call, inside the event loop that serves requests:
grpc.aio ties a channel to the loop it was made in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from grpc import aio

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.client import CHANNEL_OPTIONS, channel_credentials
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.interceptors import REQUEST_ID_KEY
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc

GenerateCall: TypeAlias = aio.UnaryStreamCall[
    serving_pb2.GenerateRequest, serving_pb2.GenerateResponse
]
UploadCall: TypeAlias = aio.StreamUnaryCall[
    data_pb2.UploadDatasetVersionRequest, data_pb2.UploadDatasetVersionResponse
]
ExportCall: TypeAlias = aio.UnaryStreamCall[
    data_pb2.ExportDatasetVersionRequest, data_pb2.ExportDatasetVersionResponse
]
EventsCall: TypeAlias = aio.UnaryStreamCall[
    trainer_pb2.StreamTrainingJobEventsRequest, trainer_pb2.StreamTrainingJobEventsResponse
]

# Enough for any real deployment history; /v1/models only needs the live ones,
# which serving lists first (newest first).
_MAX_DEPLOYMENT_PAGES = 20
# Files (dataset versions) are listed whole: at most this many pages of datasets,
# and of each dataset's versions.
_MAX_LIST_PAGES = 20
_LIST_PAGE_SIZE = 500


class _Channel:
    """One service's channel, opened on first use."""

    def __init__(self, client: ClientSettings, address: str) -> None:
        self._client = client
        self._address = address
        self._channel: aio.Channel | None = None

    def get(self) -> aio.Channel:
        if self._channel is None:
            credentials = channel_credentials(self._client)
            if credentials is None:
                self._channel = aio.insecure_channel(self._address, options=CHANNEL_OPTIONS)
            else:
                self._channel = aio.secure_channel(
                    self._address, credentials, options=CHANNEL_OPTIONS
                )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _metadata(token: str, request_id: str) -> Sequence[tuple[str, str]]:
    return ((AUTHORIZATION_KEY, bearer(token)), (REQUEST_ID_KEY, request_id))


class ServingUpstream:
    """Authenticated calls to ``ownchat.serving.v1.ServingService``."""

    def __init__(self, client: ClientSettings, token: str, timeout_seconds: float) -> None:
        self._channel = _Channel(client, client.serving_address)
        self._token = token
        self._timeout = timeout_seconds

    def _stub(self) -> serving_pb2_grpc.ServingServiceStub:
        return serving_pb2_grpc.ServingServiceStub(self._channel.get())

    def generate(self, request: serving_pb2.GenerateRequest, request_id: str) -> GenerateCall:
        """Starts a Generate stream; the deadline covers the whole reply."""
        call: GenerateCall = self._stub().Generate(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return call

    async def list_deployments(self, request_id: str) -> list[serving_pb2.Deployment]:
        """Every deployment serving knows, newest first."""
        stub = self._stub()
        deployments: list[serving_pb2.Deployment] = []
        token = ""
        for _ in range(_MAX_DEPLOYMENT_PAGES):
            response: serving_pb2.ListDeploymentsResponse = await stub.ListDeployments(
                serving_pb2.ListDeploymentsRequest(page_size=100, page_token=token),
                timeout=self._timeout,
                metadata=_metadata(self._token, request_id),
            )
            deployments.extend(response.deployments)
            token = response.next_page_token
            if not token:
                break
        return deployments

    async def close(self) -> None:
        """Closes the channel, cancelling calls in flight."""
        await self._channel.close()


class EvaluatorUpstream:
    """Authenticated calls to the review queue of ``ownchat.evaluator.v1.EvaluatorService``."""

    def __init__(self, client: ClientSettings, token: str) -> None:
        self._channel = _Channel(client, client.evaluator_address)
        self._token = token
        # Queue calls are small reads and writes of the evaluator's store.
        self._timeout = client.timeout_seconds

    def _stub(self) -> evaluator_pb2_grpc.EvaluatorServiceStub:
        return evaluator_pb2_grpc.EvaluatorServiceStub(self._channel.get())

    async def next_review_item(
        self, request: evaluator_pb2.NextReviewItemRequest, request_id: str
    ) -> evaluator_pb2.NextReviewItemResponse:
        """Leases the reviewer's next item (or the one they hold)."""
        response: evaluator_pb2.NextReviewItemResponse = await self._stub().NextReviewItem(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def submit_review(
        self, request: evaluator_pb2.SubmitReviewRequest, request_id: str
    ) -> evaluator_pb2.SubmitReviewResponse:
        """Stores a review of a leased item."""
        response: evaluator_pb2.SubmitReviewResponse = await self._stub().SubmitReview(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def release_review_item(
        self, request: evaluator_pb2.ReleaseReviewItemRequest, request_id: str
    ) -> evaluator_pb2.ReleaseReviewItemResponse:
        """Gives a leased item back unreviewed (a skip)."""
        response: evaluator_pb2.ReleaseReviewItemResponse = await self._stub().ReleaseReviewItem(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def enqueue_review_item(self, item: evaluator_pb2.ReviewItem, request_id: str) -> str:
        """Adds one item to the review queue; its id."""
        response: evaluator_pb2.EnqueueReviewItemsResponse = await self._stub().EnqueueReviewItems(
            evaluator_pb2.EnqueueReviewItemsRequest(items=[item]),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return response.item_ids[0]

    async def get_review_stats(
        self, request: evaluator_pb2.GetReviewStatsRequest, request_id: str
    ) -> evaluator_pb2.GetReviewStatsResponse:
        """The queue's counts and reviews per reviewer."""
        response: evaluator_pb2.GetReviewStatsResponse = await self._stub().GetReviewStats(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()


class DataUpstream:
    """Authenticated calls to ``ownchat.data.v1.DataService``."""

    def __init__(self, client: ClientSettings, token: str) -> None:
        self._channel = _Channel(client, client.data_address)
        self._token = token
        self._timeout = client.timeout_seconds

    def _stub(self) -> data_pb2_grpc.DataServiceStub:
        return data_pb2_grpc.DataServiceStub(self._channel.get())

    async def scrub_texts(self, texts: Sequence[str], request_id: str) -> list[str]:
        """The texts with personal data replaced, one placeholder scope for them all
        (the same value gets the same placeholder in every text)."""
        response: data_pb2.ScrubTextResponse = await self._stub().ScrubText(
            data_pb2.ScrubTextRequest(texts=list(texts)),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return list(response.texts)

    def upload_dataset_version(self, request_id: str, timeout_seconds: float) -> UploadCall:
        """Opens an upload stream: the caller writes the header, then the chunks, then
        ``done_writing()``, and awaits the stored version; the deadline covers it all."""
        call: UploadCall = self._stub().UploadDatasetVersion(
            timeout=timeout_seconds, metadata=_metadata(self._token, request_id)
        )
        return call

    async def get_dataset_version(
        self, version_id: str, request_id: str
    ) -> data_pb2.DatasetVersion:
        """One dataset version."""
        response: data_pb2.GetDatasetVersionResponse = await self._stub().GetDatasetVersion(
            data_pb2.GetDatasetVersionRequest(dataset_version_id=version_id),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return response.dataset_version

    async def list_dataset_versions(self, request_id: str) -> list[data_pb2.DatasetVersion]:
        """Every version of every dataset (at most ``_MAX_LIST_PAGES`` pages of each list)."""
        stub = self._stub()
        metadata = _metadata(self._token, request_id)
        names: list[str] = []
        token = ""
        for _ in range(_MAX_LIST_PAGES):
            datasets: data_pb2.ListDatasetsResponse = await stub.ListDatasets(
                data_pb2.ListDatasetsRequest(page_size=_LIST_PAGE_SIZE, page_token=token),
                timeout=self._timeout,
                metadata=metadata,
            )
            names.extend(dataset.name for dataset in datasets.datasets)
            token = datasets.next_page_token
            if not token:
                break
        versions: list[data_pb2.DatasetVersion] = []
        for name in names:
            token = ""
            for _ in range(_MAX_LIST_PAGES):
                page: data_pb2.ListDatasetVersionsResponse = await stub.ListDatasetVersions(
                    data_pb2.ListDatasetVersionsRequest(
                        dataset_name=name, page_size=_LIST_PAGE_SIZE, page_token=token
                    ),
                    timeout=self._timeout,
                    metadata=metadata,
                )
                versions.extend(page.dataset_versions)
                token = page.next_page_token
                if not token:
                    break
        return versions

    def export_dataset_version(
        self,
        version_id: str,
        split: data_pb2.Split.ValueType,
        request_id: str,
        timeout_seconds: float,
    ) -> ExportCall:
        """Starts downloading one split as JSON lines; the deadline covers the download."""
        call: ExportCall = self._stub().ExportDatasetVersion(
            data_pb2.ExportDatasetVersionRequest(dataset_version_id=version_id, split=split),
            timeout=timeout_seconds,
            metadata=_metadata(self._token, request_id),
        )
        return call

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()


class TrainerUpstream:
    """Authenticated calls to ``ownchat.trainer.v1.TrainerService``."""

    def __init__(self, client: ClientSettings, token: str) -> None:
        self._channel = _Channel(client, client.trainer_address)
        self._token = token
        # Job calls are reads and writes of the trainer's store (creating a job
        # checks its dataset through the data service).
        self._timeout = client.timeout_seconds

    def _stub(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self._channel.get())

    async def create_job(
        self, request: trainer_pb2.CreateTrainingJobRequest, request_id: str
    ) -> trainer_pb2.TrainingJob:
        """Validates and queues a job (the first one made with the same idempotency key)."""
        response: trainer_pb2.CreateTrainingJobResponse = await self._stub().CreateTrainingJob(
            request, timeout=self._timeout, metadata=_metadata(self._token, request_id)
        )
        return response.job

    async def get_job(self, job_id: str, request_id: str) -> trainer_pb2.TrainingJob:
        """One job."""
        response: trainer_pb2.GetTrainingJobResponse = await self._stub().GetTrainingJob(
            trainer_pb2.GetTrainingJobRequest(job_id=job_id),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return response.job

    async def list_jobs(
        self, page_size: int, page_token: str, request_id: str
    ) -> trainer_pb2.ListTrainingJobsResponse:
        """One page of jobs, newest first."""
        response: trainer_pb2.ListTrainingJobsResponse = await self._stub().ListTrainingJobs(
            trainer_pb2.ListTrainingJobsRequest(page_size=page_size, page_token=page_token),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return response

    async def cancel_job(self, job_id: str, request_id: str) -> trainer_pb2.TrainingJob:
        """Cancels a job that has not ended."""
        response: trainer_pb2.CancelTrainingJobResponse = await self._stub().CancelTrainingJob(
            trainer_pb2.CancelTrainingJobRequest(job_id=job_id),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return response.job

    async def pause_job(self, job_id: str, request_id: str) -> trainer_pb2.TrainingJob:
        """Pauses a running job at its next checkpoint."""
        response: trainer_pb2.PauseTrainingJobResponse = await self._stub().PauseTrainingJob(
            trainer_pb2.PauseTrainingJobRequest(job_id=job_id),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return response.job

    async def resume_job(self, job_id: str, request_id: str) -> trainer_pb2.TrainingJob:
        """Resumes a paused job from its last checkpoint."""
        response: trainer_pb2.ResumeTrainingJobResponse = await self._stub().ResumeTrainingJob(
            trainer_pb2.ResumeTrainingJobRequest(job_id=job_id),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return response.job

    def stream_events(self, job_id: str, request_id: str) -> EventsCall:
        """Starts a job's event stream from its first event; it ends when the job does."""
        call: EventsCall = self._stub().StreamTrainingJobEvents(
            trainer_pb2.StreamTrainingJobEventsRequest(job_id=job_id),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return call

    async def list_checkpoints(self, job_id: str, request_id: str) -> list[trainer_pb2.Checkpoint]:
        """A job's checkpoints, oldest first."""
        response: trainer_pb2.ListCheckpointsResponse = await self._stub().ListCheckpoints(
            trainer_pb2.ListCheckpointsRequest(job_id=job_id),
            timeout=self._timeout,
            metadata=_metadata(self._token, request_id),
        )
        return list(response.checkpoints)

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()
