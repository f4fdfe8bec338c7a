"""``python -m tests.fuzz --minutes 10``: the live fuzzer, for as long as you like.

Starts a real scheduler and worker, attacks them over TCP and HTTP with
inputs made from the op catalogue (valid, broken and random), checks every
few dozen inputs that both still answer, and prints the tally as JSON:
inputs tried, crashes, hangs, servers that stopped serving.  The exit code
is 1 if any of those is not zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .live import run_live


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--inputs", type=int, default=10**9, help="stop after this many")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--rounds", type=int, default=0,
                        help="fresh clusters to fuzz in turn (default: one per minute)")
    args = parser.parse_args(argv)
    rounds = args.rounds or max(1, int(args.minutes))
    total: dict[str, int] = {"inputs": 0, "crashes": 0, "hangs": 0,
                             "servers_that_stopped_serving": 0}
    notes: list[str] = []
    for i in range(rounds):
        tally = run_live(args.inputs // rounds, 60 * args.minutes / rounds, args.seed + i)
        found = tally.as_dict()
        for name in total:
            total[name] += found[name]
        notes.extend(found["notes"])
        print(json.dumps({"round": i, "seed": args.seed + i, **found}), file=sys.stderr)
    print(json.dumps({"seed": args.seed, **total, "notes": notes[:50]}, indent=2))
    bad = total["crashes"] + total["hangs"] + total["servers_that_stopped_serving"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
