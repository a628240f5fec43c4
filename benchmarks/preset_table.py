"""The preset table: what each preset of ``dwrprune prune`` runs, and how long it took on the
bundled ResNet-20, read from the committed run folders of those presets.

    python benchmarks/preset_table.py [--update-docs]

What a preset runs is computed from its definition (the job list a collection plans on
ResNet-20's 7 removable blocks at 28 px); the times are the run folder's own records: the
sum of the samples' seconds and the final fine-tune's seconds (evaluation included).  A run
folder whose collection settings differ from the preset's current definition is refused, so
the table never pairs one recipe with another's time.  Writes
``benchmarks/results/presets.csv``, the packaged ``dwrprune/pipeline/preset_times.json``
that ``dwrprune prune --help`` prints, and with ``--update-docs`` the README's
``<!-- preset-table -->`` block.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from docs_block import update_docs  # noqa: E402
from dwrprune.pipeline import resolve_config  # noqa: E402
from dwrprune.pipeline.jobs import describe_jobs, plan_jobs  # noqa: E402

RUNS = {"quick": "resnet20-fmnist-quick", "full": "resnet20-fmnist-full"}
PACKAGED = ROOT / "src" / "dwrprune" / "pipeline" / "preset_times.json"


def preset_row(name: str, run: Path) -> dict:
    cfg = resolve_config(name)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    want = cfg.collect_config()  # settings added since the run are at their defaults there
    # the training precision changes the time, not what a preset runs: shown beside it
    # (runs from before the option trained in fp32)
    precision = recorded.get("precision", "fp32")
    differ = sorted(k for k in want if k in recorded and recorded[k] != want[k]
                    and k != "precision")
    if differ:
        sys.exit(f"{run} was collected with other settings than preset {name!r} now has "
                 f"({', '.join(differ)}); run the preset again into a new folder")
    jobs = plan_jobs(cfg, 7, 28, 8)
    with sqlite3.connect(run / "samples.sqlite") as db:
        n, collect_s = db.execute("select count(*), sum(seconds) from samples").fetchone()
    final = json.loads((run / "final.json").read_text())
    final_s = final["history"][-1]["seconds"] if final["history"] else 0.0
    return {"preset": name, "runs": describe_jobs(jobs, cfg),
            "final": f"{cfg.final_epochs} epoch{'s' if cfg.final_epochs != 1 else ''} on "
                     f"{cfg.final_subset or 'all the'} training images"
                     + (f", distilled from the original ({cfg.distill:g})" if cfg.distill
                        else ""),
            "samples": n, "precision": precision, "collect_min": round(collect_s / 60, 1),
            "final_min": round(final_s / 60, 1),
            "total_min": round((collect_s + final_s) / 60, 1), "run": str(run.relative_to(ROOT))}


def minutes(m: float) -> str:
    return f"{m:.1f}" if m < 10 else f"{m:.0f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | what it runs | final fine-tune | time on the bundled ResNet-20, 2 CPU "
             "cores (collection + final) | trained in |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['preset']}` | {r['runs']} | {r['final']} | "
                     f"{minutes(r['total_min'])} min ({minutes(r['collect_min'])} + "
                     f"{minutes(r['final_min'])}) | {r['precision']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args(argv)
    rows = [preset_row(name, ROOT / "benchmarks" / "results" / "pipeline" / run)
            for name, run in RUNS.items()]
    out = ROOT / "benchmarks" / "results" / "presets.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    PACKAGED.write_text(json.dumps({r["preset"]: {k: r[k] for k in (
        "runs", "final", "total_min", "precision")} for r in rows}, indent=1) + "\n")
    text = markdown(rows)
    print(text)
    if args.update_docs:
        print(f"updated {update_docs('preset-table', text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
