"""A typed Python client for the MTL service's v1 API: `Client`, its errors, and the API's
request and response models (`mtl_client.models`). Depends on httpx and pydantic only."""

from mtl_client.client import Client
from mtl_client.errors import ApiError, ClientError
from mtl_client.models import ArtifactStatus, JobKind, JobPhase, JobStatus

__all__ = ["ApiError", "ArtifactStatus", "Client", "ClientError", "JobKind", "JobPhase", "JobStatus"]
__version__ = "0.1.0"
