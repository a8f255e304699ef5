"""Both servers the service ships with, for modules that must hold on each (the hostile suite's
over-the-wire tests, the LangSmith SDK tests, the drain on SIGTERM). Pull in with
``pytest_plugins = ["support_servers"]`` and point ``server_kind`` at ``any_server``; each test
of the module then runs once under uvicorn and once under granian
(``feedback-tokens serve --server granian``).
"""

from __future__ import annotations

import pytest

from procs import SERVERS


@pytest.fixture(scope="module", params=SERVERS)
def any_server(request: pytest.FixtureRequest) -> str:
    return str(request.param)
