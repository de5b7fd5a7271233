"""The documentation holds together: every relative link of README.md, recipes/README.md and
docs/ resolves (to a file, and to a heading when it names one), every command has a page the
README links, and the paths the pages name exist in the tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "recipes" / "README.md", *(ROOT / "docs").rglob("*.md")])

LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*?\]\(([^)\s]+)\)")  # [text](target), ![alt](target)
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a link in a code example is not a link)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a linked heading: its text
    heading = heading.strip().lower()
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """Every anchor the page's headings give, duplicates numbered as GitHub numbers them."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(_prose(page.read_text())):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page.read_text())) if not t.startswith(EXTERNAL)]


def test_the_pages_exist():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "recipes/README.md", "docs/architecture.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
        elif file != page and ROOT not in file.parents:
            broken.append(f"{target}: outside the repository")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_command_has_a_page_the_readme_links():
    from longnet_cli.cli import cli

    readme_links = set(_links(ROOT / "README.md"))
    missing = [name for name in cli.commands if f"docs/{name}.md" not in readme_links]
    assert not missing, f"commands without a docs/<command>.md linked from README.md: {missing}"


def test_readme_is_an_entry_point():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 230, f"README.md has {len(lines)} lines: move reference text to docs/"


# repository paths named in backticks: `longnet_cli/model/attention.py`, `tests/e2e/test_fuzz.py`
NAMED_PATH = re.compile(
    r"`((?:longnet_cli|tests|pipelines|recipes|docs)/[\w./-]*\.(?:py|sh|yaml|md))`"
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_paths_exist(page: Path):
    missing = sorted(
        {path for path in NAMED_PATH.findall(page.read_text()) if not (ROOT / path).exists()}
    )
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"
