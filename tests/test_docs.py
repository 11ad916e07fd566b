"""The README and docs/: every relative link and picture points at something, and the README stays short."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE_TAG = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def links(text: str) -> list[str]:
    """Every link and image target in Markdown text, outside code blocks."""
    prose = FENCE.sub("", text)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return LINK.findall(prose) + IMAGE_TAG.findall(prose)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a document's headings."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def broken(document: Path) -> list[str]:
    """What a document links to that is not there, in words."""
    problems, text = [], document.read_text()
    name = document.relative_to(ROOT) if document.is_relative_to(ROOT) else document.name
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # an address on the web, or mailto:
        path_part, _, anchor = target.partition("#")
        destination = (document.parent / path_part).resolve() if path_part else document
        if not destination.exists():
            problems.append(f"{name} links to {target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text()):
            problems.append(f"{name} links to {target}: no such heading")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_picture_resolves(document):
    assert broken(document) == []


def test_the_readme_fits_on_a_screen_or_two():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200


def test_every_topic_page_is_reachable_from_the_docs_index():
    index = set(links((ROOT / "docs" / "README.md").read_text()))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages - index == set()


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading-with-code) ![gone](pictures/gone.png) [bad](there.md#nowhere)\n"
                    "[web](https://example.com/x) `[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n")
    found = broken(page)
    assert len(found) == 2 and "pictures/gone.png: no such file" in found[0] and "no such heading" in found[1]
