"""`droq-registry serve | validate PATH... | probe [PATH]`; `server.py` runs the server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .diff import conflict_message
from .folder import TransientError, list_folder, raise_if_transient, read_source
from .logs import PROG, configure_logging, startup_failure
from .model import Failed, Gone, Outcome, Parsed
from .nodefile import Schema
from .refusal import printable
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
    """GET <path> where the service listens ($HOST, $PORT; a wildcard HOST through the
    loopback of its family); 0 if one of its addresses answers 200. The slim image has no
    curl, and needs none."""
    import urllib.error
    import urllib.request

    from .connections import local_urls

    try:
        settings = Settings.from_env()
        urls = local_urls(settings.host, settings.port)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # HOST does not resolve
        print(f"{PROG}: HOST={settings.host!r}: {exc}", file=sys.stderr)
        return 1
    for url in (f"{base}{path}" for base in urls):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return 0
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
    """Check node files with the service's own rules; print `file: error` lines.

    Exit 0 when every file would be served, 1 when any is refused or missing, 2 when the
    check itself could not run (no schema, or the process is short of descriptors or memory:
    nothing was decided about the files). Never a traceback."""
    schema_path = Settings().schema_path
    try:
        try:
            schema = Schema.load(schema_path)
        except OSError as exc:
            raise_if_transient(exc, str(schema_path))
            raise
        return _validate(paths, schema)
    except TransientError as exc:
        print(f"{PROG}: cannot check the files now: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"{PROG}: cannot load the node schema {schema_path}: {exc}", file=sys.stderr)
        return 2


def _validate(paths: Sequence[str], schema: Schema) -> int:
    files: list[tuple[Path, str]] = []
    missing = 0
    for raw in paths:
        path = Path(raw)
        try:
            # A folder is listed as the service lists it: the same names, also those that
            # are not regular files (they are refused, with the reason).
            found = list_folder(path) if path.is_dir() else None
        except OSError as exc:
            print(f"{_shown(raw)}: cannot list the folder: {exc.strerror or exc}")
            missing += 1
            continue
        if found is not None:
            files.extend((path, name) for name in sorted(found))
        elif os.path.lexists(path):
            files.append((path.parent, path.name))
        else:
            print(f"{_shown(raw)}: no such file or folder")
            missing += 1
    outcomes: list[tuple[Path, Outcome | None]] = []
    for folder, name in files:
        outcome = read_source(folder, name, schema)[0]
        if isinstance(outcome, Gone):  # a dangling link: the service sees no file there either
            print(f"{_shown(folder / name)}: no such file or folder")
            missing += 1
        else:
            outcomes.append((folder / name, outcome))
    failures = missing
    # The file whose name sorts first owns a node_id, as in the service.
    owners: dict[str, Path] = {}
    for path, outcome in sorted(outcomes, key=lambda item: (item[0].name, str(item[0]))):
        if isinstance(outcome, Parsed):
            owners.setdefault(outcome.node_id, path)
    for path, outcome in outcomes:
        if isinstance(outcome, Parsed):
            owner = owners[outcome.node_id]
            if owner != path:
                print(f"{_shown(path)}: {conflict_message(outcome.node_id, _shown(owner))}")
                failures += 1
            else:
                print(f"{_shown(path)}: ok ({outcome.node_id})")
        elif isinstance(outcome, Failed):
            print(f"{_shown(path)}: {outcome.error}")
            failures += 1
    if failures:
        refused = failures - missing
        print(f"{refused} of {len(outcomes)} file(s) refused" + (f", {missing} path(s) not found" if missing else ""),
              file=sys.stderr)
    return 1 if failures else 0


def _shown(path: str | Path) -> str:
    """A path as it can be printed on one line: bytes that are not UTF-8 and characters that
    are not printable shown escaped."""
    return printable(os.fsencode(path).decode("utf-8", "backslashreplace"))


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    raise SystemExit(main())
