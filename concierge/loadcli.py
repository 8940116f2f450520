"""`concierge load devices`: synthetic device traffic on a real broker, outside eventlet.

  concierge load devices --devices N (--rate R | --interval S) --duration S [--macs FILE]
                         [--door-rate R] [--call-rate R] [--seed N]

The broker is AMQP_URI's and the deployment CONCIERGE_DEPLOYMENT's (its exchange prefix), as for
every other command. MACs come from FILE (one per line, the first N), or are synthetic: the
devices service then refuses their traffic as "unknown_mac" (`concierge traffic` counts it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from concierge.devicesim import MAX_DEVICES, MAX_SECONDS, TrafficPublisher, run_load, synthetic_macs


def _macs(args: argparse.Namespace) -> list[str]:
    if args.macs:
        with open(args.macs) as lines:
            found = [line.strip().upper().replace(":", "").replace("-", "")
                     for line in lines if line.strip() and not line.startswith("#")]
        if len(found) < args.devices:
            raise SystemExit(f"{args.macs} has {len(found)} MACs, fewer than --devices")
        return found[:args.devices]
    return synthetic_macs(args.devices)


def cmd_load(args: argparse.Namespace) -> int:
    uri = os.environ.get("AMQP_URI", "")
    if not uri or uri.startswith("concierge-memory"):
        print("concierge load needs a real broker: set AMQP_URI", file=sys.stderr)
        return 2
    deployment = os.environ.get("CONCIERGE_DEPLOYMENT", "")
    interval = args.interval if args.interval else args.devices / args.rate
    publisher = TrafficPublisher(uri, f"{deployment}." if deployment else "")
    try:
        summary = run_load(publisher, _macs(args), interval, args.duration,
                           door_rate=args.door_rate, call_rate=args.call_rate, seed=args.seed,
                           out=sys.stderr)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    finally:
        publisher.close()
    print(json.dumps({**summary, "interval_s": round(interval, 3)}))
    return 0


def _bounded(low: float, high: float, kind: type = float) -> object:
    def check(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"between {low:g} and {high:g}")
        return value

    return check


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="concierge load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["devices"])
    p.add_argument("--devices", type=_bounded(1, MAX_DEVICES, int), required=True)
    pace = p.add_mutually_exclusive_group(required=True)
    pace.add_argument("--rate", type=_bounded(0.001, 1_000_000),
                      help="heartbeats per second, fleet-wide (interval = devices / rate)")
    pace.add_argument("--interval", type=_bounded(0.01, 3600),
                      help="seconds between two heartbeats of a device")
    p.add_argument("--duration", type=_bounded(0.1, MAX_SECONDS), required=True,
                   help="seconds to run")
    p.add_argument("--door-rate", type=_bounded(0, 100_000), default=0.0,
                   help="door openings per second, fleet-wide")
    p.add_argument("--call-rate", type=_bounded(0, 100_000), default=0.0,
                   help="calls per second, fleet-wide")
    p.add_argument("--macs", help="a file of MACs, one per line (default: synthetic MACs)")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(fn=cmd_load)
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    return int(args.fn(args) or 0)
