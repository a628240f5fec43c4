"""Which axes dwrprune offers on models nobody wrote a test for, and whether its cost query is
exact there: for each model, the removable blocks and channel groups found, then physical
shrinking at random (d, w, r) with the shrunk model's MACs from `torch.utils.flop_counter`
compared with `Shrinker.macs`, and the time each shrink took.

    python benchmarks/coverage.py run [--models tv/resnet18,timm/lcnet_050 [--redo]] [--points 3]
    python benchmarks/coverage.py render --update-docs

Each model runs in its own process under a time limit (a model Torch-Pruning cannot trace in
that time is reported as such); one CSV row per model is appended as it finishes, so a stopped
run resumes.  Models get random weights (pretrained=False): only structure is checked.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "coverage"
FIELDS = ["model", "family", "resolution", "blocks", "block_kinds", "groups", "axes", "points",
          "exact", "shrink_seconds", "status", "note"]

# (name, family): torchvision and timm classification models across families.
MODELS = [
    ("tv/resnet18", "ResNet"), ("tv/resnet50", "ResNet"), ("tv/resnext50_32x4d", "ResNeXt"),
    ("tv/wide_resnet50_2", "Wide ResNet"), ("tv/mobilenet_v2", "MobileNetV2"),
    ("tv/mobilenet_v3_small", "MobileNetV3"), ("tv/mobilenet_v3_large", "MobileNetV3"),
    ("tv/efficientnet_b0", "EfficientNet"), ("tv/efficientnet_v2_s", "EfficientNetV2"),
    ("tv/regnet_x_400mf", "RegNet"), ("tv/regnet_y_400mf", "RegNet"),
    ("tv/mnasnet0_5", "MNASNet"), ("tv/convnext_tiny", "ConvNeXt"), ("tv/vgg11_bn", "VGG"),
    ("tv/densenet121", "DenseNet"), ("tv/shufflenet_v2_x0_5", "ShuffleNetV2"),
    ("tv/squeezenet1_1", "SqueezeNet"), ("tv/googlenet", "GoogLeNet"),
    ("tv/vit_b_16", "ViT"), ("tv/swin_t", "Swin"), ("tv/maxvit_t", "MaxViT"),
    ("timm/resnet10t", "ResNet"), ("timm/resnet18d", "ResNet"),
    ("timm/mobilenetv3_small_050", "MobileNetV3"), ("timm/lcnet_050", "LCNet"),
    ("timm/regnetx_002", "RegNet"), ("timm/convnext_atto", "ConvNeXt"),
    ("timm/efficientnet_b0", "EfficientNet"), ("timm/ghostnet_050", "GhostNet"),
    ("timm/mixnet_s", "MixNet"), ("timm/repvgg_a0", "RepVGG"), ("timm/cspresnet50", "CSPNet"),
    ("timm/dla34", "DLA"), ("timm/vit_tiny_patch16_224", "ViT"),
    ("timm/deit_tiny_patch16_224", "DeiT"), ("timm/mobilevit_xxs", "MobileViT"),
    ("timm/densenet121", "DenseNet"),
]


def check_model(name: str, points: int, seed: int) -> dict:
    """The axes of ``name`` and the exactness of its cost query at ``points`` random points."""
    import torch

    from dwrprune import Shrinker, count_macs, create_model
    from dwrprune.io.spec import make_spec

    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=3).eval()
    res = 64
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, res, res))
    except Exception:  # noqa: BLE001 - a fixed input size (ViT and kin)
        res = 224
    model.dwrprune_spec = make_spec(name, 10, 3, res)
    shr = Shrinker(model)
    axes = shr.axes()
    has = {"d": bool(shr.blocks), "w": axes["width"]["groups"] > 0,
           "r": shr.min_resolution < shr.base_resolution}
    rng = random.Random(seed)
    exact, worst, notes = 0, 0.0, []
    for _ in range(points):
        p = tuple(round(rng.uniform(0.4, 1.0), 3) if has[a] else 1.0 for a in "dwr")
        t0 = time.perf_counter()
        try:
            out = shr.shrink(*p)
        except Exception as e:  # noqa: BLE001 - reported per point
            notes.append(f"{p}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        worst = max(worst, time.perf_counter() - t0)
        px = out.spec["input"]["resolution"]
        if count_macs(out.model, px, 3) == shr.macs(*p):
            exact += 1
        else:
            notes.append(f"{p}: MACs differ")
    return {"resolution": res, "blocks": len(shr.blocks),
            "block_kinds": "+".join(axes["depth"]["kinds"]), "groups": axes["width"]["groups"],
            "axes": "".join(a for a in "dwr" if has[a]), "points": points, "exact": exact,
            "shrink_seconds": round(worst, 2),
            "status": "ok" if exact == points else "fail",
            "note": "; ".join(notes + [w for w in (axes["depth"]["why"], axes["width"]["why"])
                                       if w])}


def _worker(name, points, seed, queue):
    try:
        queue.put(check_model(name, points, seed))
    except Exception as e:  # noqa: BLE001 - one line per model in the table
        queue.put({"status": "fail", "note": f"{type(e).__name__}: "
                   f"{str(e).splitlines()[0][:160] if str(e) else ''}"})


def cmd_run(args) -> None:
    from dwrbench.bench import append_row

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "coverage.csv"
    wanted = [(n, fam) for n, fam in MODELS if not args.models or n in args.models]
    done = set()
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if args.redo:  # the named models are checked again: their old rows go
            names = {n for n, _ in wanted}
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                w.writeheader()
                w.writerows(r for r in rows if r["model"] not in names)
            rows = [r for r in rows if r["model"] not in names]
        done = {r["model"] for r in rows}
    ctx = mp.get_context("spawn")
    for name, family in wanted:
        if name in done:
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(name, args.points, args.seed, queue))
        t0 = time.perf_counter()
        proc.start()
        proc.join(args.timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            row = {"status": "timeout", "note": f"no result in {args.timeout} s"}
        else:
            row = queue.get() if not queue.empty() else {"status": "fail",
                                                          "note": f"exit {proc.exitcode}"}
        row = {"model": name, "family": family, **row}
        append_row(path, row, FIELDS)
        print(f"[coverage] {name:30s} {row['status']:8s} axes={row.get('axes', '')} "
              f"exact={row.get('exact', '')}/{row.get('points', '')} "
              f"({time.perf_counter() - t0:.0f} s) {row.get('note', '')[:100]}", flush=True)
    (out / "settings.json").write_text(json.dumps({"points": args.points, "seed": args.seed,
                                                   "timeout_s": args.timeout}, indent=2))


def render(rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    fams = {r["family"] for r in ok}
    lines = [f"{len(ok)} of {len(rows)} models shrink with exact MACs at every random point "
             f"({len(fams)} families).", "",
             "| model | family | input | axes | blocks (kinds) | channel groups | exact MACs | "
             "slowest shrink (s) | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        axes = r["axes"] or "-"
        blocks = f"{r['blocks']} ({r['block_kinds']})" if r["blocks"] not in ("", "0") else (
            "0" if r["blocks"] == "0" else "")
        exact = f"{r['exact']}/{r['points']}" if r["points"] else r["status"]
        lines.append(f"| {r['model']} | {r['family']} | {r['resolution']} | {axes} | {blocks} | "
                     f"{r['groups']} | {exact} | {r['shrink_seconds']} | "
                     f"{r['note'].replace('|', '/')[:140]} |")
    return "\n".join(lines)


def cmd_render(args) -> None:
    with open(Path(args.out) / "coverage.csv", newline="") as f:
        text = render(list(csv.DictReader(f)))
    print(text)
    if args.update_docs:
        from docs_block import update_docs

        update_docs("coverage", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--models", type=lambda s: s.split(","), default=None)
    r.add_argument("--points", type=int, default=3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--timeout", type=int, default=240, help="seconds per model")
    r.add_argument("--redo", action="store_true",
                   help="check the --models again, replacing their rows")
    r.add_argument("--out", default=str(OUT))
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("render")
    d.add_argument("--out", default=str(OUT))
    d.add_argument("--update-docs", action="store_true")
    d.set_defaults(func=cmd_render)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
