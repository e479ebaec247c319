"""The v1 API: only includes the routers."""

from fastapi import APIRouter

from app.api.routes import admin, base_models, classifiers, datasets, health, jobs

api_router = APIRouter()
for module in (health, datasets, classifiers, jobs, base_models, admin):
    api_router.include_router(module.router)
