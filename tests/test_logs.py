"""Log lines are safe and uniform: what others wrote cannot forge or colour a line, and with
LOG_FORMAT=json every line is JSON, the first ones included.

The end-to-end tests run the real service (`server` fixture) on real files whose names
carry newlines, terminal escapes and bytes that are not UTF-8 (made through bytes paths),
and read the log it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from droq_registry.logs import TextFormatter, escape
from support.files import ROOT, node_doc, write_json
from support.http import sources
from support.polling import wait_until
from support.server import ServerProcess, server_env

DEADLINE = 10.0
TEXT_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ")

FORGED = b"evil\n2026-01-01 00:00:00,000 INFO    droq_registry.reconcile: reconciled revision 99.json"
COLOURED = b"\x1b[31mred\x1b[0m\r.json"
REVERSED = "bidi\u202egnp.json".encode()
NOT_UTF8 = b"caf\xe9-\xff.json"
#: How each name must appear in a log line.
SHOWN = {
    FORGED: "evil\\n2026-01-01 00:00:00,000 INFO    droq_registry.reconcile: reconciled revision 99.json",
    COLOURED: "\\x1b[31mred\\x1b[0m\\r.json",
    REVERSED: "bidi\\u202egnp.json",
    NOT_UTF8: "caf\\xe9-\\xff.json",
}


def make_hostile_names(assets: Path) -> None:
    """Node files with hostile names: three with broken content (each is logged), one whose
    name is not UTF-8 (skipped, said once)."""
    folder = os.fsencode(assets)
    for name in (FORGED, COLOURED, REVERSED):
        fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"{")
        os.close(fd)
    fd = os.open(os.path.join(folder, NOT_UTF8), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, json.dumps(node_doc("never")).encode())
    os.close(fd)


def errors_by_name(srv: ServerProcess) -> dict[str, str]:
    return {path: row["error"] for path, row in sources(srv).items() if row["state"] == "error"}


def env_for(assets: Path, db: Path, **extra: str) -> dict[str, str]:
    return server_env(assets, db, RELOAD="", LOG_LEVEL="info", **extra)


def test_text_lines_show_hostile_file_names_escaped_and_never_forge_a_line(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    make_hostile_names(assets)
    srv = server(env_for(assets, tmp_path / "r.db", LOG_FORMAT="text"), tmp_path / "server.log")
    wait_until(lambda: len(errors_by_name(srv)) == 3, DEADLINE)
    errors = errors_by_name(srv)
    write_json(assets / "fine.json", node_doc("fine"))  # the watcher goes on
    wait_until(lambda: srv.get("/api/v1/nodes/fine").status_code == 200, DEADLINE)
    assert srv.get("/health").json()["watcher"] == {"state": "watching", "error": None, "restarts": 0}
    assert srv.stop() == 0

    raw = srv.log_path.read_bytes()
    lines = raw.decode("utf-8").split("\n")
    assert lines.pop() == ""
    assert [line for line in lines if not TEXT_RECORD.match(line)] == [], "every line starts a record"
    assert re.findall(rb"[\x00-\x08\x0b-\x1f\x7f]", raw) == [], "no control character reaches the log"
    assert "\u202e" not in raw.decode()
    forged = [line for line in lines if "reconciled revision 99" in line]
    assert len(forged) == 1 and " WARNING " in forged[0], "the forged record stays inside the warning"
    warnings = [line.split(" ", 2)[2] for line in lines if " WARNING " in line and "REGISTRY_API_TOKEN" not in line]
    assert sorted(warnings) == sorted(
        [f"WARNING droq_registry.reconcile: {SHOWN[name]}: {errors[os.fsdecode(name)]}"
         for name in (FORGED, COLOURED, REVERSED)]
        + [f"WARNING droq_registry.reconcile: ignoring {SHOWN[NOT_UTF8]}: its name is not valid UTF-8"]
    )


def test_json_log_is_json_from_the_first_line_with_messages_escaped_the_same_way(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # A database of another schema version is set aside while the store opens (once this
    # service holds the writer lock): its warning is JSON like every other line.
    db = tmp_path / "r.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '999')")
    conn.close()
    make_hostile_names(assets)
    srv = server(env_for(assets, db, LOG_FORMAT="json"), tmp_path / "server.log")
    wait_until(lambda: len(errors_by_name(srv)) == 3, DEADLINE)
    errors = errors_by_name(srv)
    assert srv.stop() == 0

    lines = srv.log_path.read_bytes().decode("utf-8").split("\n")
    assert lines.pop() == ""
    records = [json.loads(line) for line in lines]  # fails on the first line that is not JSON
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    store_lines = [r for r in records if r["logger"] == "droq_registry.store" and r["level"] == "WARNING"]
    assert store_lines == [{
        "time": store_lines[0]["time"], "level": "WARNING", "logger": "droq_registry.store",
        "message": f"database {db} is unusable (schema version 999, expected 2); rebuilding it from the node files",
    }]
    warnings = sorted(r["message"] for r in records
                      if r["level"] == "WARNING" and r["logger"] == "droq_registry.reconcile")
    assert warnings == sorted(
        [f"{SHOWN[name]}: {errors[os.fsdecode(name)]}" for name in (FORGED, COLOURED, REVERSED)]
        + [f"ignoring {SHOWN[NOT_UTF8]}: its name is not valid UTF-8"]
    )


def test_a_bad_setting_with_json_logs_is_one_json_line(tmp_path: Path) -> None:
    env = {**os.environ, "LOG_FORMAT": "json", "PORT": "abc", "REGISTRY_DB_PATH": str(tmp_path / "r.db")}
    result = subprocess.run([sys.executable, "-m", "droq_registry", "serve"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert record == {"time": record["time"], "level": "ERROR", "logger": "droq_registry",
                      "message": "PORT='abc': invalid value"}
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("plain name.json", "plain name.json", id="printable-unchanged"),
        pytest.param("a\nb\r\tc", "a\\nb\\r\\tc", id="line-breaks-and-tab"),
        pytest.param("\x1b[2J\x07\x00\x7f", "\\x1b[2J\\x07\\x00\\x7f", id="terminal-controls"),
        pytest.param("\x9b31m", "\\x9b31m", id="c1-control"),
        pytest.param("\u2028\u202e\u200b", "\\u2028\\u202e\\u200b", id="unicode-format-and-separators"),
        pytest.param(os.fsdecode(b"caf\xe9"), "caf\\xe9", id="undecodable-byte"),
        pytest.param("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c", id="unicode-letters-unchanged"),
        pytest.param("\U000e0001", "\\U000e0001", id="astral-format-char"),
    ],
)
def test_escape_shows_every_unprintable_character_and_keeps_the_rest(text: str, shown: str) -> None:
    assert escape(text) == shown


def test_text_traceback_lines_are_indented_so_only_the_record_starts_a_line() -> None:
    try:
        raise ValueError("bad\n2026-01-01 00:00:00,000 INFO    x: forged\x1b[0m")
    except ValueError:
        record = logging.LogRecord("droq_registry", logging.ERROR, __file__, 1, "failed on %s", ("a\nb",),
                                   sys.exc_info())
    lines = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record).split("\n")
    assert lines[0] == "ERROR droq_registry: failed on a\\nb"
    assert lines[1] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in lines[1:])
    assert lines[-2:] == ["    ValueError: bad", "    2026-01-01 00:00:00,000 INFO    x: forged\\x1b[0m"]


def test_json_logging_turns_warnings_and_uncaught_thread_errors_into_json_lines(tmp_path: Path) -> None:
    script = (
        "import threading, warnings\n"
        "from droq_registry.logs import configure_logging\n"
        "from droq_registry.settings import Settings\n"
        "configure_logging(Settings(log_format='json'))\n"
        "warnings.warn('old\\nstyle')\n"
        "def boom():\n"
        "    raise RuntimeError('in a thread')\n"
        "t = threading.Thread(target=boom, name='worker'); t.start(); t.join()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, "")
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(r["level"], r["logger"]) for r in records] == [("WARNING", "py.warnings"), ("ERROR", "droq_registry")]
    assert "UserWarning: old\\nstyle" in records[0]["message"]
    assert records[1]["message"] == "uncaught exception in thread worker"
    assert records[1]["exc_info"].endswith("RuntimeError: in a thread")
