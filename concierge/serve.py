"""Run nameko service classes in this process: `python -m concierge.serve module:Class ...`.

The eventlet patch must come before any import of sockets or psycopg, so this module patches
first and imports the services only afterwards, by name.
"""

from __future__ import annotations

from concierge import green

green.patch()

import logging  # noqa: E402
import pkgutil  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from concierge import heap, logs, shutdown  # noqa: E402
from concierge.config import Settings  # noqa: E402


def load(path: str) -> type:
    """"module:Name" to the object it names."""
    return pkgutil.resolve_name(path)


def start(classes: Sequence[type], settings: Settings) -> Any:
    """Start the services; from then on SIGTERM and SIGINT stop them gracefully, and
    `runner.wait()` returns once they have (`concierge.shutdown`)."""
    from nameko.runners import ServiceRunner

    logs.install()
    runner = ServiceRunner({**settings.nameko_config(), "CONCIERGE_SETTINGS": settings})
    for cls in classes:
        runner.add_service(cls)
    runner.start()
    shutdown.on_signals(runner, settings)
    heap.settle()
    return runner


def serve_forever(classes: Sequence[type], settings: Settings, banner: str = "ready") -> None:
    runner = start(classes, settings)
    print(banner, flush=True)
    runner.wait()


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    classes = [load(p) for p in (argv if argv is not None else sys.argv[1:])]
    serve_forever(classes, settings)


if __name__ == "__main__":
    main()
