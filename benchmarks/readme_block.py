"""Replace the text between ``<!-- TAG -->`` and ``<!-- /TAG -->`` in the README: how every
benchmark script puts its generated table there."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme(tag: str, text: str, readme: Path = README) -> None:
    new, n = re.subn(rf"(<!-- {re.escape(tag)} -->).*?(<!-- /{re.escape(tag)} -->)",
                     lambda m: f"{m.group(1)}\n{text}\n{m.group(2)}", readme.read_text(),
                     flags=re.S)
    if n != 1:
        sys.exit(f"README.md has no <!-- {tag} --> block")
    readme.write_text(new)
