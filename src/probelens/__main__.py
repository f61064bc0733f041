"""``python -m probelens`` (and the ``probelens`` console script): probelens' command line.

Subcommands:

- ``export LOGDIR [--out DIR] [--max-frames N] [--fps F]``: animated GIFs, filmstrips, scalar plots and a static
  ``index.html`` from the TensorBoard event files under ``LOGDIR`` (see :mod:`probelens.export`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_USAGE = """usage: probelens <command> [options]

commands:
  export LOGDIR [--out DIR] [--max-frames N] [--fps F]
        write animated GIFs, filmstrips, scalar plots and a static index.html
        from the TensorBoard event files under LOGDIR

Run `probelens <command> --help` for the options of a command."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand.

    Args:
        argv: Command line arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The subcommand's exit code; 2 for a missing or unknown command.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "export":
        from probelens.export import main as export_main

        return export_main(rest)
    print(f"probelens: error: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
