"""Keyrings for modules that must hold on every signing option we ship (the hostile suite, the
LangSmith SDK tests). Pull in with ``pytest_plugins = ["support_keys"]`` and point ``keys_dir``
at ``signing_keys``; each test of the module then runs once per algorithm.

- ``signing_alg``: ES256 (the default, asymmetric) and HS256 (a shared secret).
- ``signing_keys``: a keyring directory whose one active key is of ``signing_alg``, shared by the
  module (its tests must not change it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.keys.key import DEFAULT_ALG
from app.keys.keyring import KeyringDir

SIGNING_ALGS = (DEFAULT_ALG, "HS256")


@pytest.fixture(scope="module", params=SIGNING_ALGS)
def signing_alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory, signing_alg: str) -> Path:
    path = tmp_path_factory.mktemp(f"keys-{signing_alg}") / "keys"
    KeyringDir(path).init(signing_alg)  # type: ignore[arg-type]
    assert KeyringDir(path).load().signer.alg == signing_alg  # type: ignore[union-attr]
    return path
