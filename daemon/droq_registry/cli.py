"""`droq-registry serve | validate PATH... | probe [PATH]`; `server.py` runs the server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .diff import Failed, Parsed, conflict_message
from .logs import PROG, configure_logging, startup_failure
from .nodefile import Schema
from .reconcile import is_node_file, read_source
from .settings import Settings, SettingsError, log_format_from_env
from .store import StoreError, check_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Droq registry service")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the registry (configured by environment variables)")
    check = commands.add_parser("validate", help="check node files or folders of them")
    check.add_argument("paths", nargs="+", metavar="PATH")
    probe_cmd = commands.add_parser(
        "probe", help="exit 0 if the local service answers 200 (for container health checks)"
    )
    probe_cmd.add_argument("path", nargs="?", default="/health")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return validate(args.paths)
    if args.command == "probe":
        return probe(args.path)
    return serve()


def probe(path: str) -> int:
    """GET http://127.0.0.1:$PORT<path>; the slim image has no curl, and needs none."""
    import urllib.error
    import urllib.request

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{settings.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{PROG}: {url}: {exc}", file=sys.stderr)
        return 1


def serve() -> int:
    """Run the service until SIGTERM/SIGINT."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        startup_failure(log_format_from_env(), str(exc))
        return 2
    # Before anything else can log (opening the store may), so every line has the format.
    configure_logging(settings)
    try:
        Schema.load(settings.schema_path)
        check_path(settings.db_path, settings.assets_dir)
    except (SettingsError, StoreError) as exc:
        startup_failure(settings.log_format, str(exc))
        return 2
    except (OSError, ValueError) as exc:
        startup_failure(settings.log_format, f"cannot start: {exc}")
        return 2

    from .server import run

    return run(settings)


def service_main() -> int:
    """`droq-registry-service`: the same command, serving when given no sub-command."""
    return main(sys.argv[1:] or ["serve"])


def validate(paths: Sequence[str]) -> int:
    """Check node files with the service's own rules; print `file: error` lines."""
    schema = Schema.load(Settings().schema_path)
    files: list[tuple[Path, str]] = []
    missing = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            names = sorted(n for n in os.listdir(path) if is_node_file(n))
            files.extend((path, name) for name in names if (path / name).is_file())
        elif path.is_file():
            files.append((path.parent, path.name))
        else:
            print(f"{raw}: no such file or folder")
            missing += 1
    failures = missing
    outcomes = [(folder / name, read_source(folder, name, schema)[0]) for folder, name in files]
    # The file whose name sorts first owns a node_id, as in the service.
    owners: dict[str, Path] = {}
    for path, outcome in sorted(outcomes, key=lambda item: (item[0].name, str(item[0]))):
        if isinstance(outcome, Parsed):
            owners.setdefault(outcome.node_id, path)
    for path, outcome in outcomes:
        if isinstance(outcome, Parsed):
            owner = owners[outcome.node_id]
            if owner != path:
                print(f"{path}: {conflict_message(outcome.node_id, str(owner))}")
                failures += 1
            else:
                print(f"{path}: ok ({outcome.node_id})")
        elif isinstance(outcome, Failed):
            print(f"{path}: {outcome.error}")
            failures += 1
    if failures:
        refused = failures - missing
        print(f"{refused} of {len(files)} file(s) refused" + (f", {missing} path(s) not found" if missing else ""),
              file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    raise SystemExit(main())
