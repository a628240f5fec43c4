"""The README is a front page; the docs speak to users; every generated table has one home."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "benchmarks" / "README.md"]


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for tag in ("main-command", "test-command"):
        assert f"<!-- {tag} -->" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_speak_to_users(page):
    words = re.findall(r"\b(this session|sessions?|afternoon|lent)\b", page.read_text(), re.I)
    assert words == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_every_generated_block_has_one_home():
    """docs_block.update_docs writes a block into the one page that holds it."""
    homes: dict[str, list[str]] = {}
    for page in PAGES:
        for tag in re.findall(r"<!-- /([a-z0-9.\-]+) -->", page.read_text()):
            homes.setdefault(tag, []).append(page.name)
    assert homes, "no generated blocks found"
    assert {t: p for t, p in homes.items() if len(p) != 1} == {}
