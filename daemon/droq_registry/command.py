"""The `droq-registry` and `droq-registry-service` commands' first step.

It imports nothing heavy, so that a stop signal sent at once after the container starts
is recorded rather than lost (see `stopsignal`); then the command itself (`cli`) runs.
"""

from __future__ import annotations

import sys

from .stopsignal import record_stop_signals


def main() -> int:
    """`droq-registry ...`: `cli.main`, with stop signals recorded first when it serves."""
    if sys.argv[1:] == ["serve"]:
        record_stop_signals()
    from .cli import main as cli_main

    return cli_main()


def service_main() -> int:
    """`droq-registry-service`: serving when given no sub-command."""
    if sys.argv[1:] in ([], ["serve"]):
        record_stop_signals()
    from .cli import service_main as cli_service_main

    return cli_service_main()
