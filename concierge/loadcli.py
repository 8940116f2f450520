"""`concierge load devices` and `concierge simulate devices`: synthetic device traffic on a real
broker, outside eventlet.

  concierge load devices --devices N (--rate R | --interval S) --duration S [--macs FILE]
                         [--door-rate R] [--call-rate R] [--seed N]
  concierge simulate devices --devices N --duration S [--macs FILE | --register URL]
                             [--door-rate R] [--call-rate R] [--fail-ratio F] [--seed N]

`load` publishes heartbeats, status, door openings and calls. `simulate` runs devices that
consume their push queues and acknowledge each command (received, then succeeded or failed),
and open doors and place calls at the rates asked for. With `--register URL` it first registers
N door phones through that gateway's public API (a new installer of the distributor
CONCIERGE_BOOTSTRAP_DISTRIBUTOR names, "user:password", with their MACs, a community and a
building) and prints the installer's login, so that commands can be sent to them.

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

from concierge.devicesim import (
    MAX_DEVICES,
    MAX_SECONDS,
    MAX_SIMULATED,
    TrafficPublisher,
    run_load,
    synthetic_macs,
)


def _macs(args: argparse.Namespace) -> list[str]:
    if args.macs:
        with open(args.macs) as lines:
            found = [line.strip().upper().replace(":", "").replace("-", "")
                     for line in lines if line.strip() and not line.startswith("#")]
        if len(found) < args.devices:
            raise SystemExit(f"{args.macs} has {len(found)} MACs, fewer than --devices")
        return found[:args.devices]
    return synthetic_macs(args.devices)


def _broker(command: str) -> tuple[str, str] | None:
    """AMQP_URI and the deployment's exchange prefix; None (said why) without a real broker."""
    uri = os.environ.get("AMQP_URI", "")
    if not uri or uri.startswith("concierge-memory"):
        print(f"concierge {command} needs a real broker: set AMQP_URI", file=sys.stderr)
        return None
    deployment = os.environ.get("CONCIERGE_DEPLOYMENT", "")
    return uri, f"{deployment}." if deployment else ""


def cmd_load(args: argparse.Namespace) -> int:
    broker = _broker("load")
    if broker is None:
        return 2
    uri, prefix = broker
    interval = args.interval if args.interval else args.devices / args.rate
    publisher = TrafficPublisher(uri, prefix)
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


def cmd_simulate(args: argparse.Namespace) -> int:
    from concierge.devicesim import DeviceSimulator, register_fleet

    broker = _broker("simulate")
    if broker is None:
        return 2
    uri, prefix = broker
    registered = None
    if args.register:
        user, _, password = os.environ.get("CONCIERGE_BOOTSTRAP_DISTRIBUTOR", "").partition(":")
        if not user or not password:
            print("--register needs CONCIERGE_BOOTSTRAP_DISTRIBUTOR=user:password",
                  file=sys.stderr)
            return 2
        registered = register_fleet(args.register, user, password, args.devices)
        macs = registered["macs"]
        print(json.dumps({"registered": len(registered["devices"]),
                          "installer_token": registered["token"],
                          "building": registered["building"]}), file=sys.stderr)
    else:
        macs = _macs(args)
    simulator = DeviceSimulator(uri, macs, prefix,
                                fail_ratio=args.fail_ratio, seed=args.seed)
    try:
        summary = simulator.run(args.duration, door_rate=args.door_rate,
                                call_rate=args.call_rate, out=sys.stderr)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    finally:
        simulator.close()
    print(json.dumps(summary))
    return 0


def _bounded(low: float, high: float, kind: type = float) -> object:
    def check(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"between {low:g} and {high:g}")
        return value

    return check


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="concierge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="publish synthetic device traffic")
    load.add_argument("what", choices=["devices"])
    load.add_argument("--devices", type=_bounded(1, MAX_DEVICES, int), required=True)
    pace = load.add_mutually_exclusive_group(required=True)
    pace.add_argument("--rate", type=_bounded(0.001, 1_000_000),
                      help="heartbeats per second, fleet-wide (interval = devices / rate)")
    pace.add_argument("--interval", type=_bounded(0.01, 3600),
                      help="seconds between two heartbeats of a device")
    load.set_defaults(fn=cmd_load)
    simulate = commands.add_parser("simulate", help="devices that answer their pushes")
    simulate.add_argument("what", choices=["devices"])
    simulate.add_argument("--devices", type=_bounded(1, MAX_SIMULATED, int), required=True)
    simulate.add_argument("--register", metavar="URL",
                          help="register the devices through this gateway first")
    simulate.add_argument("--fail-ratio", type=_bounded(0, 1), default=0.0,
                          help="the share of commands the devices report failed")
    simulate.set_defaults(fn=cmd_simulate)
    for each in (load, simulate):
        each.add_argument("--duration", type=_bounded(0.1, MAX_SECONDS), required=True,
                          help="seconds to run")
        each.add_argument("--door-rate", type=_bounded(0, 100_000), default=0.0,
                          help="door openings per second, fleet-wide")
        each.add_argument("--call-rate", type=_bounded(0, 100_000), default=0.0,
                          help="calls per second, fleet-wide")
        each.add_argument("--macs", help="a file of MACs, one per line (default: synthetic "
                                         "MACs)")
        each.add_argument("--seed", type=int, default=1)
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    return int(args.fn(args) or 0)
