"""The README's configuration table is the settings the service reads: every variable
``Settings.from_env`` reads is there, nothing else is, and each default it states is the real one
(feeding it back changes nothing)."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from app.config import Settings

CONFIG = (ROOT / "app" / "config.py").read_text()
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Configuration\n") : README.index("\n## ", README.index("## Configuration\n") + 1)]
ROWS = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z_]+)` \| ([^|]+) \|", SECTION, re.M)}


# Read by a library rather than by Settings: prometheus_client's multiprocess directory.
LIBRARY_SETTINGS = {"PROMETHEUS_MULTIPROC_DIR"}


def test_the_table_names_every_setting_and_no_other() -> None:
    read = set(re.findall(r'"((?:FEEDBACK_|REDIS_)[A-Z_]+)"', CONFIG))
    assert read, "no settings found in app/config.py"
    assert set(ROWS) == read | LIBRARY_SETTINGS


@pytest.mark.parametrize(
    "name", sorted(n for n, default in ROWS.items() if default.strip().startswith("`") and n not in LIBRARY_SETTINGS)
)
def test_each_stated_default_is_the_default(name: str) -> None:
    stated = ROWS[name].strip()[1:].split("`", 1)[0]  # the first code span: `json` (`text` under ...)
    assert Settings.from_env({name: stated}) == Settings.from_env({}), stated
