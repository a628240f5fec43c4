"""Replace the text between ``<!-- TAG -->`` and ``<!-- /TAG -->`` in the one page of docs/
(or the README) that holds that block: how every benchmark script puts its generated table
where it is read."""

from __future__ import annotations

import csv
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


# ------------------------------------------- a timing script's CSV, table.md and docs block
def add_output_args(ap, csv_name: str) -> None:
    """--out, --update-docs, --block and --render, as every timing script takes them."""
    ap.add_argument("--out", required=True)
    ap.add_argument("--update-docs", action="store_true")
    ap.add_argument("--block", default=None, help="docs block tag (default: the out folder)")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: rebuild table.md (and the docs block with "
                         f"--update-docs) from --out's {csv_name}")


def read_rows(out: str | Path, csv_name: str) -> list[dict]:
    with open(Path(out) / csv_name, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(out: str | Path, csv_name: str, fields: list[str], rows: list[dict]) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / csv_name, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def write_table(args, text: str) -> None:
    """OUT/table.md, and with --update-docs the docs block (--block, or OUT's name)."""
    out = Path(args.out)
    (out / "table.md").write_text(text + "\n")
    if args.update_docs:
        print(f"updated {update_docs(args.block or out.name, text)}")
