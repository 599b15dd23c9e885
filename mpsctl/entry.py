"""The ``mpsctl`` program's first lines (the console script and ``python -m mpsctl``).

A bare ``mpsctl stop`` signals the service here, before the command line interface is
imported (``mpsctl.control.quick_stop``): the service's own shutdown then overlaps mpsctl's
start-up instead of following it. Everything else goes straight to ``mpsctl.cli``.
"""

import sys


def run() -> None:
    if sys.argv[1:2] == ["stop"]:
        from mpsctl.control.quick_stop import begin

        begin(sys.argv[2:])
    from mpsctl.cli import run as cli_run

    cli_run()
