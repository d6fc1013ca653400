"""A threshold scan from Python: one system, one run per trigger level, the rate of each.

    python docs/examples/threshold_scan.py topologies/loopback.yaml --frames 500
"""
from __future__ import annotations

import argparse

from coordinator.api import System


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topology")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    parser.add_argument("--frames", type=int, default=0, help="frames per run (0: use --duration)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    args = parser.parse_args()

    with System(args.topology) as system:           # nodes and emulated boards start once
        print(f"{'level V':>8} {'run':>4} {'result':>10} {'saved':>7} {'rate /s':>8}")
        for level in args.levels:
            summary = system.run({f"acquisition.{board}.source.trigger.level": level
                                  for board in system.topology.acquisition},
                                 frames=args.frames, duration=0 if args.frames else args.duration)
            produced = summary["books"]["produced"] / max(1, len(system.topology.acquisition))
            rate = produced / summary["live_s"] if summary["live_s"] else 0.0
            print(f"{level:8.3f} {summary['run']:4d} {summary['result']:>10} "
                  f"{summary['books']['saved']:7d} {rate:8.1f}")
    # leaving the block (also by an exception or Ctrl-C) stops a run in progress and shuts down


if __name__ == "__main__":
    main()
