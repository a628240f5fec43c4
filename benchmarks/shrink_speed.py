"""How fast is shrinking and the exact cost query?  (issue: shrink ResNet-50 < 2 s, one cost
query < 0.2 s on a 2-core CPU.)

    python benchmarks/shrink_speed.py [--model tv/resnet50] [--resolution 224] [--points 5]

Prints, for random (d, w, r) points: the one-off analysis time, the median cost-query time
(after the analysis is cached) and the median time of a full shrink (physical surgery).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from dwrprune import count_macs, create_model
from dwrprune.cost import machine_stamp
from dwrprune.io.spec import make_spec
from dwrprune.pruning.shrink import Shrinker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tv/resnet50")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rnd = random.Random(args.seed)
    model = create_model(args.model, num_classes=1000, in_channels=3).eval()
    model.dwrprune_spec = make_spec(args.model, 1000, 3, args.resolution)

    t0 = time.perf_counter()
    shr = Shrinker(model, transitions=True)
    shr.macs(1.0, 0.99, 1.0)  # fills the caches: block order, channel groups, geometry
    analysis = time.perf_counter() - t0

    lo_r = shr.min_resolution / shr.base_resolution
    points = [(rnd.uniform(0.2, 1), rnd.uniform(0.2, 1), rnd.uniform(max(lo_r, 0.3), 1))
              for _ in range(args.points)]
    q_times, s_times, exact = [], [], True
    for p in points:
        t = time.perf_counter()
        m = shr.macs(*p)
        q_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = shr.shrink(*p)
        s_times.append(time.perf_counter() - t)
        # counted independently on the shrunk model (out.macs itself comes from the query)
        exact &= count_macs(out.model, out.spec["input"]["resolution"], 3) == m
    print(json.dumps({
        "model": args.model, "resolution": args.resolution, "points": len(points),
        "analysis_s": round(analysis, 3),
        "cost_query_median_s": round(statistics.median(q_times), 4),
        "cost_query_max_s": round(max(q_times), 4),
        "shrink_median_s": round(statistics.median(s_times), 3),
        "shrink_max_s": round(max(s_times), 3),
        "cost_query_exact": exact, **machine_stamp()}, indent=2))


if __name__ == "__main__":
    main()
