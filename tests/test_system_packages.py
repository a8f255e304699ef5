"""`make test` installs the Debian packages the suite needs (tests/system-packages) when they are
missing, and looks no further than the PATH when they are all there."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "tests" / "install-system-packages"
LIST = ROOT / "tests" / "system-packages"


def entries(path: Path = LIST) -> list[tuple[str, str]]:
    lines = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [(fields[0], fields[1]) for fields in lines]


def test_every_listed_package_is_present_here():
    """Here, the suite is running: what the list says to look for must be found."""
    assert entries(), "an empty list"
    for package, check in entries():
        found = glob.glob(check) if check.startswith("/") else shutil.which(check)
        assert found, f"{package}: {check} not found"


def test_nothing_to_install_means_no_apt_get(tmp_path):
    """With every package there it never reaches apt-get: on a PATH without apt-get it still
    succeeds, silently."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ["dirname"] + [check for _, check in entries() if not check.startswith("/")]:
        (bin_dir / program).symlink_to(shutil.which(program) or "/nonexistent")
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_missing_package_is_installed_with_apt_get(tmp_path):
    """A package whose program is missing goes to apt-get (absent from this PATH, so it fails
    there, after saying what it was installing)."""
    listing = tmp_path / "packages"
    listing.write_text("# comment\n\nredis-server  redis-server\nno-such-tool  no-such-tool-here\n"
                       "also-missing  /no/such/dir/*/bin/tool\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(shutil.which("redis-server") or "/nonexistent")
    (bin_dir / "id").symlink_to(shutil.which("id") or "/nonexistent")
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT)], env={"PATH": str(bin_dir), "SYSTEM_PACKAGES": str(listing)},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode != 0
    assert "installing what the tests need" in done.stdout and "no-such-tool also-missing" in done.stdout
    assert "redis-server" not in done.stdout
    assert "apt-get" in done.stderr or "sudo" in done.stderr


def test_ci_runs_the_readme_command_and_nothing_else():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[-1] == "exec make test"
    assert "apt-get" not in ci
    assert os.access(SCRIPT, os.X_OK)
