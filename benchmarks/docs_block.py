"""Replace the text between ``<!-- TAG -->`` and ``<!-- /TAG -->`` in the one page of docs/
(or the README) that holds that block: how every benchmark script puts its generated table
where it is read."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def update_docs(tag: str, text: str, root: Path = ROOT) -> Path:
    """Write ``text`` into the block ``tag``; returns the page it is on."""
    pattern = rf"(<!-- {re.escape(tag)} -->).*?(<!-- /{re.escape(tag)} -->)"
    found = [p for p in pages(root) if re.search(pattern, p.read_text(), flags=re.S)]
    if len(found) != 1:
        sys.exit(f"<!-- {tag} --> is on {len(found)} pages of README.md and docs/; "
                 "it must be on exactly one")
    page = found[0]
    page.write_text(re.sub(pattern, lambda m: f"{m.group(1)}\n{text}\n{m.group(2)}",
                           page.read_text(), flags=re.S))
    return page


def write_table(path: Path, text: str, tag: str | None = None) -> None:
    """Write a generated table to ``path`` and, with ``tag``, into that docs block too."""
    path.write_text(text + "\n")
    if tag:
        print(f"updated {update_docs(tag, text)}")
