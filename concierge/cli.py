"""The `concierge` command: run the platform, and operate on a service's events.

  concierge up                      every service in one process (embedded default)
  concierge run SERVICE             one service, distributed (AMQP_URI, CONCIERGE_DATABASE_URL)
  concierge events SERVICE [--from N] [--stream ID] [--limit N]
  concierge replay SERVICE [--from N]     re-publish a service's events to the bus
  concierge rebuild SERVICE [--only MODEL ...]   rebuild read models, swapped in while it serves
  concierge migrate [SERVICE ...]        create the services' schemas and tables (default: all)
  concierge contexts [--stored]          the declared contexts (services/*/declaration.py)
  concierge ping SERVICE                 exit 0 when the service answers RPC (probes)
  concierge traffic                      device traffic refused, by reason, and the queues' depth
  concierge load devices ...             synthetic device traffic (concierge/loadcli.py)
"""

from __future__ import annotations

from concierge import green

green.patch()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from concierge.config import Settings  # noqa: E402
from concierge.contexts import contexts, stored_contexts  # noqa: E402
from concierge.logs import mask_uri  # noqa: E402
from concierge.serve import load, serve_forever  # noqa: E402

DEMO_DISTRIBUTOR = "demo-distributor:demo-distributor-pw"

def service_class(name: str) -> type:
    return contexts()[name].service_class()


class Progress:
    """One line that rewrites itself on a terminal, plain lines otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        pct = f"{100 * done // total}%" if total else "-"
        line = f"{self.label}: {done}/{total} ({pct})"
        if self.tty:
            sys.stderr.write("\r" + line)
        elif done == total or done % 10000 < 1000:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def cmd_up(args: argparse.Namespace) -> int:
    os.environ.setdefault("CONCIERGE_BOOTSTRAP_DISTRIBUTOR", DEMO_DISTRIBUTOR)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    declared = contexts()
    names = args.services or list(declared)
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise SystemExit(f"unknown service(s): {', '.join(unknown)}")
    from concierge.serve import start

    runner = start([service_class(n) for n in names], settings)
    lines = [
        "ready",
        f"SmartPlus Cloud is running ({'embedded' if settings.embedded_bus else 'on RabbitMQ'}"
        f", {'PostgreSQL' if settings.uses_postgres else 'SQLite under ' + str(settings.data_dir)}"
        ")",
    ]
    for name in names:
        note = declared[name].describe(settings) if declared[name].describe else ""
        if note:
            lines.append(f"  {name}: {note}")

    def banner() -> None:
        for name in names:  # demo logins and data, once every service serves
            if declared[name].demo:
                try:
                    lines.extend(f"  {line}" for line in load(declared[name].demo)(settings))
                except Exception:  # the platform serves on; say what is missing
                    logging.getLogger("concierge.up").exception("%s: no demo data", name)
        lines.append("Press Ctrl+C to stop.")
        print("\n".join(lines), flush=True)

    # Beside the services, not before waiting on them: a signal while the demo data is still
    # being made (its calls wait on services that are stopping) stops the platform at once.
    green.spawn(banner)
    runner.wait()  # until SIGTERM or Ctrl+C has stopped every service (concierge.shutdown)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    declared = contexts()[args.service]
    note = declared.describe(settings) if declared.describe else ""
    serve_forever([declared.service_class()], settings,
                  banner=f"ready: {args.service} on {mask_uri(settings.amqp_uri)}"
                         f"{'; ' + note if note else ''}")
    return 0


def _operator_wiring(name: str, settings: Settings) -> Any:
    stored = stored_contexts()
    if name not in stored:
        raise SystemExit(f"{name} has no event store; choose one of {', '.join(stored)}")
    # Its connections show as the CLI's in pg_stat_activity, not as the service's.
    return contexts()[name].wire(dataclasses.replace(settings, role="cli"))


def cmd_events(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    wiring = _operator_wiring(args.service, settings)
    try:
        if args.stream:
            from concierge.envelope import build

            records = wiring.app.stream(args.stream)
            for record in records:
                print(json.dumps(build(args.service, record,
                                       publishable=wiring.publishable())))
            return 0
        printed, after = 0, max(args.start - 1, 0)
        while args.limit is None or printed < args.limit:
            batch = wiring.read_log(after, 500)
            if not batch:
                break
            for message in batch:
                print(json.dumps(message))
                printed += 1
                if args.limit is not None and printed >= args.limit:
                    break
            after = batch[-1]["position"]
        return 0
    finally:
        wiring.close()


def cmd_replay(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    wiring = _operator_wiring(args.service, settings)
    progress = Progress(f"replaying {args.service}")
    try:
        total = wiring.relay.replay(max(args.start - 1, 0), progress=progress)
    finally:
        progress.close()
        wiring.close()
    print(f"re-published {total} events of {args.service} to {mask_uri(settings.amqp_uri)}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Rebuild into new tables while the service serves, then swap them in (concierge.rebuild)."""
    import signal
    import time

    from concierge.rebuild import (
        Interrupted,
        ProgressPrinter,
        RebuildRefused,
        SourceUnavailable,
        rebuild,
    )

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # as Ctrl+C: the new tables are dropped
    settings = Settings.from_env()
    wiring = _operator_wiring(args.service, settings)
    if settings.embedded_bus:
        # No broker to ask the other services over: read their logs from their stores,
        # which the embedded platform keeps in this same data folder.
        reader = StoreLogReader(settings)
        wiring.stoppers.append(reader.close)
        for subs in wiring.subscriptions.values():
            for sub in subs:
                sub.read_log = reader
    printer = ProgressPrinter(sys.stderr)
    started = time.monotonic()
    try:
        total = rebuild(wiring, progress=printer, only=set(args.only) if args.only else None)
    except (SourceUnavailable, RebuildRefused, Interrupted, ValueError) as exc:
        printer.close()
        print(f"concierge rebuild {args.service}: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 1
    finally:
        printer.close()
        wiring.close()
    names = sorted(args.only) if args.only else [m.name for m in wiring.read_models
                                                  if m.metadata.sorted_tables]
    print(f"rebuilt {', '.join(names)} of {args.service} from {total} events in "
          f"{time.monotonic() - started:.1f} s, swapped in while it served")
    return 0


class StoreLogReader:
    """Other services' logs read from their own stores, as their `read_log` RPC answers them
    (public attributes only), for a rebuild in the embedded mode: its bus lives inside the
    `concierge up` process, out of this one's reach."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wirings: dict[str, Any] = {}

    def _wiring(self, source: str) -> Any:
        if source not in self.wirings:
            self.wirings[source] = _operator_wiring(source, self.settings)
        return self.wirings[source]

    def __call__(self, source: str, after: int, limit: int) -> list[dict[str, Any]]:
        return self._wiring(source).read_log(after, limit)

    def last_position(self, source: str) -> int:
        return self._wiring(source).app.max_position()

    def close(self) -> None:
        for wiring in self.wirings.values():
            wiring.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create the services' schemas, event tables and read-model tables (idempotent)."""
    settings = Settings.from_env()
    for name in args.services or stored_contexts():
        wiring = _operator_wiring(name, settings)
        for model in wiring.read_models:
            model.create(wiring.engine)
        wiring.close()
        print(f"{name}: store and read models are in place")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    """What the devices' traffic ingest refused (counted by reason since the start) and what
    waits in its queue and its dead-letter queue, as one JSON object."""
    from concierge.ingest import refusal_counts

    settings = Settings.from_env()
    ingest = "devices.traffic"
    wiring = _operator_wiring("devices", settings)
    try:
        report: dict[str, Any] = {"ingest": f"{settings.amqp_prefix}{ingest}",
                                  "refused": refusal_counts(wiring.engine, ingest)}
    finally:
        wiring.close()
    if not settings.embedded_bus:
        import kombu

        with kombu.Connection(settings.amqp_uri) as conn:
            for key, name in (("waiting", report["ingest"]),
                              ("dead_letters_kept", f"{report['ingest']}.dead")):
                try:
                    report[key] = conn.channel().queue_declare(name, passive=True).message_count
                except Exception:  # not declared yet: the devices service has not started
                    report[key] = None
    print(json.dumps(report, indent=2))
    return 0


def cmd_contexts(args: argparse.Namespace) -> int:
    """The declared contexts, one name a line (the deploy manifests loop over them)."""
    for name, declared in contexts().items():
        if declared.stored or not args.stored:
            print(name)
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    """Exit 0 when the service answers an RPC within the timeout (used by probes)."""
    from concierge.rpc import ClusterRpcProxy

    settings = Settings.from_env()
    try:
        with ClusterRpcProxy(settings.nameko_config(), timeout=args.timeout) as rpc:
            rpc[args.service].read_log(0, 1)
    except Exception as exc:
        print(f"{args.service} did not answer: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"{args.service} answers")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="concierge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run every service in one process")
    up.add_argument("services", nargs="*", default=[],
                    help=f"only these services (default: all of {', '.join(contexts())})")
    up.set_defaults(fn=cmd_up)
    run = sub.add_parser("run", help="run one service (distributed mode)")
    run.add_argument("service", choices=list(contexts()))
    run.set_defaults(fn=cmd_run)
    events = sub.add_parser("events", help="print a service's events as JSON lines")
    events.add_argument("service", choices=stored_contexts())
    events.add_argument("--from", dest="start", type=int, default=1, help="first position")
    events.add_argument("--stream", help="only this aggregate's events")
    events.add_argument("--limit", type=int, default=None)
    events.set_defaults(fn=cmd_events)
    replay = sub.add_parser("replay", help="re-publish a service's events to the bus")
    replay.add_argument("service", choices=stored_contexts())
    replay.add_argument("--from", dest="start", type=int, default=1, help="first position")
    replay.set_defaults(fn=cmd_replay)
    rebuild_ = sub.add_parser("rebuild", help="rebuild a service's read models while it serves")
    rebuild_.add_argument("service", choices=stored_contexts())
    rebuild_.add_argument("--only", nargs="+", action="extend", metavar="MODEL",
                          help="only these read models (default: all of the service's)")
    rebuild_.set_defaults(fn=cmd_rebuild)
    migrate = sub.add_parser("migrate", help="create services' schemas and tables")
    migrate.add_argument("services", nargs="*", default=[], metavar="service",
                         help=f"only these (default: all of {', '.join(stored_contexts())})")
    migrate.set_defaults(fn=cmd_migrate)
    listing = sub.add_parser("contexts", help="list the declared contexts")
    listing.add_argument("--stored", action="store_true",
                         help="only those with an event store (migrate, rebuild, replay)")
    listing.set_defaults(fn=cmd_contexts)
    ping = sub.add_parser("ping", help="check that a service answers RPC")
    ping.add_argument("service", choices=stored_contexts())
    ping.add_argument("--timeout", type=float, default=5.0)
    ping.set_defaults(fn=cmd_ping)
    traffic = sub.add_parser("traffic", help="device traffic refused, by reason; queue depths")
    traffic.set_defaults(fn=cmd_traffic)
    sub.add_parser("load", help="synthetic device traffic (concierge load devices --help)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
