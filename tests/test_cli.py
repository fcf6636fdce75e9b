"""The command line as users run it: real processes, real files, exact output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from droq_registry.nodefile import MAX_DEPTH
from support.files import LEGACY_NODE, REAL_NODES, node_doc, write_json
from support.server import ServerProcess, outside_env, server_env

FIXTURE_FOLDERS = [REAL_NODES, LEGACY_NODE.parent]
BIN = Path(sys.executable).parent


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any of the service's settings, plus `extra`."""
    env = outside_env()
    env["REGISTRY_DB_PATH"] = str(tmp_path / "cli.db")
    env["REGISTRY_ASSETS_DIR"] = str(tmp_path / "assets" / "nodes")
    env.update(extra)
    return env


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def validate(paths: list[Path | str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "droq_registry", "validate", *map(str, paths)], tmp_path)


def node_id_of(path: Path) -> str:
    return str(orjson.loads(path.read_bytes())["node_id"])


# --- validate ------------------------------------------------------------------------------


def test_validate_accepts_every_shared_fixture_file(tmp_path: Path) -> None:
    result = validate(FIXTURE_FOLDERS, tmp_path)
    expected = [
        f"{folder / path.name}: ok ({node_id_of(path)})"
        for folder in FIXTURE_FOLDERS
        for path in sorted(folder.glob("*.json"))
    ]
    assert (result.returncode, result.stdout.splitlines(), result.stderr) == (0, expected, "")
    assert len(expected) == len(list(REAL_NODES.glob("*.json"))) + 1


def test_validate_accepts_a_single_file(tmp_path: Path) -> None:
    result = validate([LEGACY_NODE], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"{LEGACY_NODE}: ok ({node_id_of(LEGACY_NODE)})\n",
        "",
    )


def test_validate_refuses_stray_keys_mixed_into_components_naming_the_key(tmp_path: Path) -> None:
    document = orjson.loads(min(REAL_NODES.glob("dfx-*.json")).read_bytes())
    document["components"]["description"] = "Another DFX component"
    bad = write_json(tmp_path / "dfx-node.json", document)
    result = validate([bad], tmp_path)
    assert (result.returncode, result.stdout.splitlines(), result.stderr.splitlines()) == (
        1,
        [f'{bad}: components.description: expected a dotted module path, got "Another DFX component"'],
        ["1 of 1 file(s) refused"],
    )


def test_validate_prints_one_file_error_line_per_file_and_exits_1(tmp_path: Path) -> None:
    folder = tmp_path / "nodes"
    folder.mkdir()
    write_json(folder / "a-good.json", node_doc("good"))
    (folder / "b-empty.json").write_bytes(b"")
    (folder / "c-broken.json").write_bytes(b'{"node_id": ')
    write_json(folder / "d-path.json", node_doc("d", components={"Foo": {"path": "not a path"}}))
    write_json(folder / "e-misspelt.json", {"node_id": "e", "name": "E", "componets": {}})
    write_json(folder / "f-priority.json", node_doc("f", priority=True))
    write_json(folder / ".hidden.json", {"not": "a node"})
    (folder / "notes.txt").write_text("not a node")
    (folder / "sub").mkdir()
    (folder / "sub" / "ignored.json").write_bytes(b"")

    result = validate([folder], tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{folder}/a-good.json: ok (good)",
        f"{folder}/b-empty.json: file is empty",
        f"{folder}/c-broken.json: not valid JSON: unexpected end of data at line 1 column 13",
        f'{folder}/d-path.json: components.Foo.path: expected a dotted module path, got "not a path"',
        (
            f'{folder}/e-misspelt.json: missing "components" (or "components_json_path"); "components": {{}}'
            ' declares none (is "componets" a misspelling of "components"?)'
        ),
        (
            f"{folder}/f-priority.json: priority: expected a whole number between -1000000000 and 1000000000,"
            " got true"
        ),
    ]
    assert result.stderr.splitlines() == ["5 of 6 file(s) refused"]


def test_validate_reports_a_duplicate_node_id_naming_the_owner(tmp_path: Path) -> None:
    folder = tmp_path / "nodes"
    folder.mkdir()
    write_json(folder / "b.json", node_doc("same"))
    write_json(folder / "a.json", node_doc("same"))
    result = validate([folder], tmp_path)
    assert (result.returncode, result.stdout.splitlines()) == (
        1,
        [
            f"{folder}/a.json: ok (same)",
            (
                f"{folder}/b.json: node_id 'same' is already declared by {folder}/a.json"
                " (the file whose name sorts first owns it)"
            ),
        ],
    )
    assert result.stderr.splitlines() == ["1 of 2 file(s) refused"]


def test_validate_gives_a_duplicate_id_to_the_first_name_whatever_the_argument_order(tmp_path: Path) -> None:
    first = write_json(tmp_path / "a.json", node_doc("same"))
    second = write_json(tmp_path / "b.json", node_doc("same"))
    result = validate([second, first], tmp_path)
    assert (result.returncode, result.stdout.splitlines()) == (
        1,
        [
            (
                f"{second}: node_id 'same' is already declared by {first}"
                " (the file whose name sorts first owns it)"
            ),
            f"{first}: ok (same)",
        ],
    )


def test_validate_resolves_components_json_path_like_the_service(tmp_path: Path) -> None:
    folder = tmp_path / "assets" / "nodes"
    folder.mkdir(parents=True)
    (tmp_path / "assets" / "components").mkdir()
    write_json(tmp_path / "assets" / "components" / "x.json", {"Foo": "pkg.foo"})
    write_json(
        folder / "split.json",
        {"node_id": "split", "name": "S", "components_json_path": "../components/x.json"},
    )
    write_json(
        folder / "lost.json",
        {"node_id": "lost", "name": "L", "components_json_path": "../components/no.json"},
    )
    result = validate([folder], tmp_path)
    assert (result.returncode, result.stdout.splitlines()) == (
        1,
        [
            f"{folder}/lost.json: components_json_path: ../components/no.json: no such file",
            f"{folder}/split.json: ok (split)",
        ],
    )


def test_validate_refuses_files_nested_too_deep_naming_the_place_without_a_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "nodes"
    folder.mkdir()
    write_json(folder / "a-good.json", node_doc("good"))
    prefix = orjson.dumps(node_doc("deep"))[:-1] + b', "extra": {"a": {"b": '
    (folder / "b-deep.json").write_bytes(prefix + b"[" * 300 + b"]" * 300 + b"}}}")
    (folder / "c-deeper.json").write_bytes(prefix + b"[" * 5000 + b"]" * 5000 + b"}}}")

    result = validate([folder], tmp_path)
    assert (result.returncode, result.stdout.splitlines(), result.stderr.splitlines()) == (
        1,
        [
            f"{folder}/a-good.json: ok (good)",
            f"{folder}/b-deep.json: extra.a.b{'[0]' * (MAX_DEPTH - 3)}: nested deeper than {MAX_DEPTH} levels",
            f"{folder}/c-deeper.json: nested deeper than {MAX_DEPTH} levels at line 1 column {len(prefix) + 1023}",
        ],
        ["2 of 3 file(s) refused"],
    )


def test_validate_lists_a_folder_as_the_service_does_refusing_what_is_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "nodes"
    folder.mkdir()
    write_json(folder / "a-good.json", node_doc("good"))
    (folder / "b-folder.json").mkdir()
    os.mkfifo(folder / "c-pipe.json")
    os.symlink("d-loop.json", folder / "d-loop.json")
    os.symlink("nowhere.json", folder / "e-dangling.json")  # not a file: the service sees none
    os.symlink(os.devnull, folder / "f-device.json")

    listed = validate([folder], tmp_path)
    assert (listed.returncode, listed.stdout.splitlines(), listed.stderr.splitlines()) == (
        1,
        [
            f"{folder}/a-good.json: ok (good)",
            f"{folder}/b-folder.json: not a regular file (a directory)",
            f"{folder}/c-pipe.json: not a regular file (a named pipe)",
            f"{folder}/d-loop.json: not a regular file (a symbolic link loop)",
            f"{folder}/f-device.json: not a regular file (a device)",
        ],
        ["4 of 5 file(s) refused"],
    )
    named = validate([folder / "c-pipe.json", folder / "d-loop.json", folder / "e-dangling.json"], tmp_path)
    assert (named.returncode, named.stdout.splitlines(), named.stderr.splitlines()) == (
        1,
        [
            f"{folder}/e-dangling.json: no such file or folder",
            f"{folder}/c-pipe.json: not a regular file (a named pipe)",
            f"{folder}/d-loop.json: not a regular file (a symbolic link loop)",
        ],
        ["2 of 2 file(s) refused, 1 path(s) not found"],
    )


def test_validate_shows_a_file_name_that_is_not_utf8_escaped(tmp_path: Path) -> None:
    name = os.fsencode(tmp_path) + b"/caf\xe9.json"
    with open(name, "wb") as f:
        f.write(orjson.dumps(node_doc("latin1")))
    result = subprocess.run(
        [sys.executable, "-m", "droq_registry", "validate", name], capture_output=True, env=clean_env(tmp_path),
        cwd=tmp_path, timeout=60, check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, os.fsencode(tmp_path) + b"/caf\\xe9.json: ok (latin1)\n", b"")


def test_validate_reports_a_path_that_does_not_exist(tmp_path: Path) -> None:
    result = validate(["no/such/place.json"], tmp_path)
    assert (result.returncode, result.stdout) == (1, "no/such/place.json: no such file or folder\n")


# --- serve: settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "line"),
    [
        pytest.param({"PORT": "abc"}, "droq-registry: PORT='abc': invalid value", id="port-abc"),
        pytest.param(
            {"PORT": "70000"},
            "droq-registry: PORT='70000': expected a port number between 1 and 65535",
            id="port-out-of-range",
        ),
        pytest.param(
            {"REGISTRY_RESYNC_SECONDS": "-1"},
            "droq-registry: REGISTRY_RESYNC_SECONDS='-1': expected a number of seconds, 0 or more",
            id="resync-negative",
        ),
        pytest.param(
            {"REGISTRY_RESYNC_SECONDS": "nan"},
            "droq-registry: REGISTRY_RESYNC_SECONDS='nan': expected a number of seconds, 0 or more",
            id="resync-nan",
        ),
        pytest.param(
            {"RELOAD": "maybe"}, "droq-registry: RELOAD='maybe': expected true or false", id="reload-maybe"
        ),
        pytest.param(
            {"LOG_LEVEL": "loud"},
            "droq-registry: LOG_LEVEL='loud': expected one of critical, error, warning, info, debug, trace",
            id="log-level",
        ),
        pytest.param(
            {"REGISTRY_CHANGES_KEEP": "0"},
            "droq-registry: REGISTRY_CHANGES_KEEP='0': expected a whole number, 1 or more",
            id="changes-keep-zero",
        ),
        pytest.param(
            {"REGISTRY_CHANGES_KEEP": "many"},
            "droq-registry: REGISTRY_CHANGES_KEEP='many': invalid value",
            id="changes-keep-word",
        ),
        pytest.param({"HOST": "   "}, "droq-registry: HOST='   ': must not be empty", id="host-blank"),
    ],
)
def test_serve_with_a_bad_setting_exits_2_with_one_line_naming_it(
    env: dict[str, str], line: str, tmp_path: Path
) -> None:
    result = run([sys.executable, "-m", "droq_registry", "serve"], tmp_path, **env)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n")
    assert not (tmp_path / "cli.db").exists()


def test_both_console_scripts_are_installed_and_refuse_bad_settings_the_same_way(tmp_path: Path) -> None:
    for script in ("droq-registry-service", "droq-registry"):
        assert os.access(BIN / script, os.X_OK), script
    service = run([str(BIN / "droq-registry-service")], tmp_path, PORT="abc")
    command = run([str(BIN / "droq-registry"), "serve"], tmp_path, PORT="abc")
    assert (service.returncode, service.stderr) == (2, "droq-registry: PORT='abc': invalid value\n")
    assert (command.returncode, command.stderr) == (2, service.stderr)


# --- serve: the real process ---------------------------------------------------------------


def start_real(server: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path) -> ServerProcess:
    return server(server_env(real_assets, tmp_path / "served.db", RELOAD="false"), tmp_path / "server.log")


def test_served_process_answers_lookup_node_and_list_from_the_real_files(
    server: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path
) -> None:
    docs = {
        d["node_id"]: d for d in (orjson.loads(p.read_bytes()) for p in sorted(real_assets.glob("*.json")))
    }
    proc = start_real(server, real_assets, tmp_path)

    listing = proc.get("/api/v1/nodes").json()
    assert [(n["metadata"]["node_id"], n["components_count"]) for n in listing["nodes"]] == [
        (i, len(docs[i]["components"])) for i in sorted(docs)
    ]

    holders = sorted(
        (d for d in docs.values() if "SaveToFileComponent" in d["components"]),
        key=lambda d: (-d.get("priority", 0), d["node_id"]),
    )
    lookup = proc.get("/api/v1/components/SaveToFileComponent/node")
    assert lookup.status_code == 200
    assert lookup.json()["node"]["node_id"] == holders[0]["node_id"]
    assert lookup.json()["module_path"] == holders[0]["components"]["SaveToFileComponent"]["path"]

    node_id = min(docs)
    detail = proc.get(f"/api/v1/nodes/{node_id}")
    assert detail.status_code == 200
    assert detail.json()["components"] == {
        cls: spec if isinstance(spec, str) else spec["path"]
        for cls, spec in sorted(docs[node_id]["components"].items())
    }
    assert detail.headers["x-registry-revision"] == "1"
    assert "Traceback" not in proc.log()


def test_served_process_exits_0_within_5_seconds_of_sigterm(
    server: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path
) -> None:
    proc = start_real(server, real_assets, tmp_path)
    assert proc.get("/ready").status_code == 200
    started = time.monotonic()
    code = proc.stop(signal.SIGTERM, timeout=5)
    assert (code, time.monotonic() - started < 5) == (0, True)
    assert "Traceback" not in proc.log()


def test_python_dash_m_and_the_console_script_show_the_same_help(tmp_path: Path) -> None:
    module = run([sys.executable, "-m", "droq_registry", "--help"], tmp_path)
    script = run([str(BIN / "droq-registry"), "--help"], tmp_path)
    assert (module.returncode, script.returncode) == (0, 0)
    assert module.stdout == script.stdout
    assert "validate" in module.stdout and "serve" in module.stdout
