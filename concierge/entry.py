"""The `concierge` command's entry: the load generator and the device simulator run on plain
threads and pika, every other command under eventlet (`concierge.cli` patches the standard
library when imported)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

WITHOUT_EVENTLET = ("load", "simulate")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in WITHOUT_EVENTLET:
        from concierge import loadcli

        return loadcli.main(args)
    from concierge import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
