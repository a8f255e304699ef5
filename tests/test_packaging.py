"""Installing the project: the wheels carry the static files, and building them prints no warning.

Built the way pip builds them (PEP 517/660 hooks in an isolated environment with the
``build-system.requires`` of pyproject.toml), with the backend's whole output captured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from build import ProjectBuilder
from build.env import DefaultIsolatedEnv
from conftest import ROOT

STATIC = sorted(p.name for p in (ROOT / "app" / "http" / "static").iterdir())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Each distribution (wheel, editable) with everything the backend printed building it."""
    out = tmp_path_factory.mktemp("dist")
    # A copy, so setuptools' build/ and *.egg-info stay out of the checkout.
    source = tmp_path_factory.mktemp("source") / "feedback-tokens"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", ".run", "keys", "build", "*.egg-info", ".*cache", ".hypothesis",
    ))
    results: dict[str, tuple[Path, str]] = {}
    with DefaultIsolatedEnv() as env:
        printed: list[str] = []

        def runner(cmd: Sequence[str], cwd: str | None = None, extra_environ: Mapping[str, str] | None = None) -> None:
            done = subprocess.run(
                cmd, cwd=cwd, capture_output=True, text=True, check=False,
                env={**env.make_extra_environ(), **(extra_environ or {}), "PATH": os.environ.get("PATH", "")},
            )
            printed.append(done.stdout + done.stderr)
            if done.returncode:
                raise RuntimeError(f"{cmd} failed:\n{done.stdout}{done.stderr}")

        builder = ProjectBuilder(source, python_executable=env.python_executable, runner=runner)
        env.install(builder.build_system_requires)
        for dist in ("wheel", "editable"):
            env.install(builder.get_requires_for_build(dist))
            printed.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # build re-raises the backend's warnings here
                path = Path(builder.build(dist, out / dist))
            printed += [f"warning: {w.category.__name__}: {w.message}" for w in caught]
            results[dist] = (path, "\n".join(printed))
    return results


def test_the_wheel_carries_the_static_files(built: dict[str, tuple[Path, str]]) -> None:
    wheel, _ = built["wheel"]
    names = zipfile.ZipFile(wheel).namelist()
    assert STATIC and all(f"app/http/static/{name}" in names for name in STATIC), names
    assert not any(name.startswith(("tests/", "bench/", "keys/")) for name in names)


@pytest.mark.parametrize("dist", ["wheel", "editable"])
def test_building_prints_no_warning(built: dict[str, tuple[Path, str]], dist: str) -> None:
    _, output = built[dist]
    warnings = [line for line in output.splitlines() if "warning" in line.lower() or "!!" in line]
    assert warnings == [], output
