"""Operations: queues, workers, health, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from internal.api.deps import ClientDep, EngineDep, RedisDep
from internal.api.routes._common import ERRORS
from internal.schemas import QueueLengths, Readiness, WorkerList
from internal.services import operations as service

router = APIRouter(tags=["operations"])
probes = APIRouter(tags=["operations"])


@router.get("/queues", response_model=QueueLengths, responses=ERRORS)
def queue_lengths(client: ClientDep) -> QueueLengths:
    """Messages waiting per queue (priority sub-queues summed)."""
    return QueueLengths(queues=service.queue_lengths(client=client))


@router.get("/workers", response_model=WorkerList, responses=ERRORS)
async def workers(client: ClientDep) -> WorkerList:
    """Workers answering within 1 s, with active tasks, processed counts, pool, queues."""
    return WorkerList(workers=await service.list_workers(client=client))


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependency checks; see /readyz)."""
    return {"status": "ok"}


@probes.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(client: ClientDep, engine: EngineDep, redis: RedisDep) -> JSONResponse:
    """Broker, result backend, database and Redis reachable; 503 if any is not."""
    report = await service.readiness(client=client, engine=engine, redis=redis)
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


@probes.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
