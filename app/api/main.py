"""The v1 API: only includes the routers."""

from fastapi import APIRouter

from app.api.routes import (
    admin,
    base_models,
    classifiers,
    dataset_images,
    datasets,
    events,
    health,
    jobs,
    metrics,
    versions,
    webhooks,
)

api_router = APIRouter()
for module in (
    health, metrics, datasets, dataset_images, classifiers, versions, jobs, events, base_models,
    webhooks, admin,
):
    api_router.include_router(module.router)
