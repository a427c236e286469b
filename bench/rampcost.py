#!/usr/bin/env python3
"""Where a sticky ramp's CPU goes, /small with the combined access log: no ramp, a 50 % ramp sticky by client
address, and the same sticky by a cookie the proxy sets (wrk sends none, so every response carries a Set-Cookie),
once with the two slots on their own upstream processes and once with both slots on the same one (two pools, one
upstream process: what the split costs the proxy itself, without waking a second process on the other cpu).

    .venv/bin/python bench/rampcost.py [--rounds 6] [--duration 3]

Three slotswitch processes (compare.py's harness: each pinned to cpu 0, wrk on cpu 1, the nginx upstreams),
measured in interleaved rounds; prints µs of CPU per request per round, and each target's median ratio to the
one without a ramp, taken within each round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import REPO_DIR, Procs, interleaved, start_slotswitch, start_upstreams

COOKIE = "sticky: {by: cookie, name: slot_sticky, set_cookie: true}\n"
STICKY = {
    "combined": "",
    "ramp-ip": "sticky: {by: ip}\n",
    "ramp-cookie": COOKIE,
    "cookie-1up": COOKIE,  # green's pool points at blue's upstream
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args()
    procs, tmp, ports = Procs(), Path(tempfile.mkdtemp(prefix="rampcost-")), set[int]()
    exe = REPO_DIR / ".venv" / "bin" / "slotswitch"
    try:
        up = start_upstreams(procs, tmp, ports)
        targets: dict[str, tuple[int, int]] = {}
        for name, sticky in STICKY.items():
            extra = f"access_log: {{enabled: true, path: {tmp}/{name}.log, format: combined}}\n" + sticky
            slots = {"blue": up["blue"], "green": up["blue"]} if name == "cookie-1up" else up
            targets[name] = start_slotswitch(procs, tmp, slots, ports, exe, name=name, extra=extra, ramp=bool(sticky))
        interleaved(targets, "/small", args.rounds, args.duration, base="combined")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
