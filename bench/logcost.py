#!/usr/bin/env python3
"""What the access log costs slotswitch, /small: no log, `combined` to a file, the same to /dev/null (all the
log's work but the file system's), and to a file with `sample: 0.01` (the formatting and writing of 1 % of
the lines).

    .venv/bin/python bench/logcost.py [--rounds 6] [--duration 3]

Four slotswitch processes (compare.py's harness: each pinned to cpu 0, wrk on cpu 1, the nginx upstreams),
measured in interleaved rounds; prints µs of CPU per request per round, and each target's median ratio to the
one without a log, taken within each round (compare.interleaved).
compare.py's nginx-log/nginx ratio is nginx's side of it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import REPO_DIR, Procs, interleaved, start_slotswitch, start_upstreams


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
        interleaved(targets, "/small", args.rounds, args.duration, base="no-log")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
