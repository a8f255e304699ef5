"""``/demo`` (only with ``FEEDBACK_DEMO=1``): the widget against a live token, in one click.

The demo issues tokens **without an API key** (short-lived, for a fresh random run each time) and
shows a run's stream entries: development only, never on a service reachable by others.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.domain import feedback
from app.errors import InvalidRequest
from app.http import assets
from app.http.endpoints import read_body, service

# The page loads its own script and the widget, and talks to this service only.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CONFIGS: dict[str, dict[str, Any]] = {
    "thumbs": {"type": "continuous", "min": 0, "max": 1},
    "stars": {"type": "continuous", "min": 1, "max": 5},
    "categories": {
        "type": "categorical",
        "categories": [
            {"value": 1, "label": "Accurate"},
            {"value": 2, "label": "Too long"},
            {"value": 3, "label": "Off topic"},
        ],
    },
    "text": {"type": "freeform"},
}


async def page(request: Request) -> Response:
    asset = assets.load("demo.html", "text/html; charset=utf-8", "no-store")
    return asset.response(request, {"Content-Security-Policy": PAGE_CSP})


async def script(request: Request) -> Response:
    return assets.load("demo.js", "text/javascript; charset=utf-8", "no-cache").response(request)


async def issue(request: Request) -> Response:
    body = feedback.loads(await read_body(request, 4096))
    if not isinstance(body, dict):
        raise InvalidRequest("send an object")
    control = body.get("control", "thumbs")
    if control not in CONFIGS:
        raise InvalidRequest(f"control must be one of {', '.join(CONFIGS)}")
    request_body = {
        "run_id": str(uuid.uuid4()),
        "feedback_key": "demo_" + str(control),
        "feedback_config": CONFIGS[str(control)],
        "expires_in": {"minutes": 30},
        "use": body.get("use"),
        "confirm": body.get("confirm"),
    }
    return JSONResponse(await service(request).issue(request_body))


async def entries(request: Request) -> Response:
    """The newest stream entries of one run (the demo's), newest first."""
    run_id = request.query_params.get("run_id", "")
    rows = await service(request).store.recent(200)
    return JSONResponse([row for row in rows if row.get("run_id") == run_id][:20])
