#!/usr/bin/env python3
"""What the access log costs slotswitch, /small: no log, `combined` to a file, the same to /dev/null (all the
log's work but the file system's), and to a file with `sample: 0.01` (the formatting and writing of 1 % of
the lines).

    .venv/bin/python bench/logcost.py [--rounds 6] [--duration 3]

Four slotswitch processes (compare.py's harness: each pinned to cpu 0, wrk on cpu 1, the nginx upstreams),
measured in interleaved rounds; prints µs of CPU per request per round, and each target's median ratio to the
one without a log, taken within each round. compare.py's nginx-log/nginx ratio is nginx's side of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import REPO_DIR, Procs, measure, start_slotswitch, start_upstreams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args()
    procs, tmp, ports = Procs(), Path(tempfile.mkdtemp(prefix="logcost-")), set[int]()
    exe = REPO_DIR / ".venv" / "bin" / "slotswitch"
    spec = {
        "no-log": "",
        "file": f"access_log: {{enabled: true, path: {tmp}/file.log, format: combined}}\n",
        "dev-null": "access_log: {enabled: true, path: /dev/null, format: combined}\n",
        "sampled": f"access_log: {{enabled: true, path: {tmp}/sampled.log, format: combined, sample: 0.01}}\n",
    }
    try:
        up = start_upstreams(procs, tmp, ports)
        targets = {name: start_slotswitch(procs, tmp, up, ports, exe, name=name, extra=e) for name, e in spec.items()}
        warm = argparse.Namespace(duration=1.0, connections=50)
        run = argparse.Namespace(duration=args.duration, connections=50)
        for name, (port, pid) in targets.items():
            measure(name, port, pid, "/small", 0, warm)
        us: dict[str, list[float]] = {name: [] for name in targets}
        for rnd in range(1, args.rounds + 1):
            for name, (port, pid) in targets.items():
                got = measure(name, port, pid, "/small", rnd, run).us_cpu_per_req
                us[name].append(got if got is not None else float("nan"))
            print(f"round {rnd}: " + "  ".join(f"{n} {v[-1]:.2f} µs" for n, v in us.items()), flush=True)
        base = us["no-log"]
        for name, values in us.items():
            ratios = [a / b for a, b in zip(values, base, strict=True)]
            print(
                f"{name:9s} median {statistics.median(values):.2f} µs/request, {statistics.median(ratios):.3f}x "
                f"({min(ratios):.3f}-{max(ratios):.3f}) the one without a log"
            )
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
