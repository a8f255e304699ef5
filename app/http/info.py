"""``GET /api/v1/info``: what the LangSmith SDKs read about a server when a client starts.

Without it every SDK client logs a failure (Python: ``Failed to get info``; JS: ``Failed to fetch
info on supported operations``). The SDKs also read ``batch_ingest_config`` for run tracing, which
this service does not take: ``use_multipart_endpoint`` false keeps the Python SDK from warning
that run compression is off, and the other keys carry the SDK's own defaults so that any code
reading them finds a value.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

DISTRIBUTION = "feedback-tokens"


@cache
def server_info() -> dict[str, Any]:
    try:
        ours = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        ours = "0.0.0"
    return {
        "version": ours,
        "license_expiration_time": None,
        "instance_flags": {},
        "batch_ingest_config": {
            "use_multipart_endpoint": False,
            "size_limit": 100,
            "size_limit_bytes": 20_971_520,
            "scale_up_qsize_trigger": 200,
            "scale_up_nthreads_limit": 32,
            "scale_down_nempty_trigger": 4,
        },
    }


async def endpoint(request: Request) -> Response:
    return JSONResponse(server_info())
