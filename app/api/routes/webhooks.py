"""Webhooks: the key a tenant verifies its deliveries with."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import CurrentKey, SettingsDep
from app.api.responses import errors
from app.infra.errors import ServiceError
from app.service.schemas import WebhookSigningSecret
from app.service.security import tenant_webhook_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=errors(401, 422, 429))


@router.get("/signing-secret", response_model=WebhookSigningSecret, responses=errors(409))
def read_signing_secret(
    key: CurrentKey, settings: SettingsDep, response: Response
) -> WebhookSigningSecret:
    """The key that signs your webhooks.

    Every delivery to a `callback_url` of this tenant's jobs carries `X-MTL-Signature`:
    `sha256=` + hex HMAC-SHA256 with this key of `<X-MTL-Timestamp>.<raw body>`. Each tenant has
    its own key, so no tenant can sign another's. 409 while the server has no
    `MTL_WEBHOOK_SECRET` (no webhooks are sent then).
    """
    if not settings.webhook_secret:
        raise ServiceError("the server sends no webhooks: MTL_WEBHOOK_SECRET is not set", 409)
    response.headers["Cache-Control"] = "no-store"  # a secret: no cache may keep it
    return WebhookSigningSecret(
        tenant=key.tenant, secret=tenant_webhook_secret(settings.webhook_secret, key.tenant)
    )
