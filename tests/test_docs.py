"""The repository's documents: every link resolves inside the repository (files and anchors), and
none points outside it, where a reader of a clone or a tarball may not follow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

SKIP = {".git", ".venv", "node_modules", ".pytest_cache", ".hypothesis", "build", ".run"}
DOCUMENTS = sorted(
    p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts) and "egg-info" not in str(p)
)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
HTML = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
BARE = re.compile(r"(?<![\w/])(?:https?|ftp)://[^\s)>]+|<(?:https?|mailto):[^>]+>|www\.\w")


def prose(path: Path) -> str:
    """The text a reader sees as links: code blocks and code spans removed."""
    return CODE.sub("", FENCE.sub("", path.read_text()))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", path.read_text()), re.M)}


def links(path: Path) -> list[str]:
    text = prose(path)
    return [m.group(1) for pattern in (INLINE, REFERENCE, HTML) for m in pattern.finditer(text)]


def test_there_are_documents_with_links():
    assert ROOT / "README.md" in DOCUMENTS and ROOT / "docs" / "api.md" in DOCUMENTS
    assert any(links(doc) for doc in DOCUMENTS)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(doc):
    problems = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            problems.append(f"{target}: points outside the repository")
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    for match in BARE.finditer(prose(doc)):
        problems.append(f"{match.group(0)}: a web address outside the repository")
    assert problems == []


def test_slugs_follow_github():
    assert slug("End users: widget, links, policies") == "end-users-widget-links-policies"
    assert slug("List a run's tokens") == "list-a-runs-tokens"
    assert slug("`make run` and HEAD") == "make-run-and-head"


def test_no_file_holds_a_merge_conflict_marker():
    """A merge left half done must not land: no tracked text file holds a conflict marker."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    marked = []
    for name in files:
        path = ROOT / name
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======" for line in lines):
            marked.append(name)
    assert marked == []
