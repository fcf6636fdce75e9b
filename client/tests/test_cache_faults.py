"""The cache file under real faults: a read-only file system, and files damaged every way.

A read-only mount (a ConfigMap, a read-only volume) still lets an executor start from the
file it holds; writes fail with one warning and cost nothing else. A damaged file is
ignored with one warning naming the file and the line, and rewritten once the registry
answers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Client, Registry, node_doc, unavailable, wait_until, write_node
from droq_registry_client import RegistryUnavailable
from droq_registry_client.cache import load
from test_lookups import FAST, every_class
from test_outage import _path


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_read_only_cache_folder_still_starts_the_client_and_costs_one_warning(
    registry: Callable[..., Registry], make_client: Callable[..., Client], tmpfs: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = registry()
    cache_path = tmpfs / "registry-cache.jsonl"
    first = make_client(reg.url, cache_path=cache_path, **FAST)
    assert first.wait_synced(15)
    known = {cls: first.node_for(cls) for cls in every_class(reg)}
    first.close()
    held = cache_path.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)  # root cannot write there either

    reg.kill()
    second = make_client(reg.url, cache_path=cache_path, cache_interval=0.05, **FAST)
    assert {cls: second.node_for(cls) for cls in known} == known  # fail static, from a read-only file
    assert second.status().from_cache

    with caplog.at_level("WARNING", logger="droq_registry_client"):
        reg.start()
        assert second.wait_synced(15)
        for n in range(3):  # several changes, several failed writes: one warning
            write_node(reg.folder, "n.json", node_doc("n", {"N": f"n.v{n}"}))
            wait_until(lambda n=n: _path(second, "N") == f"n.v{n}")
        wait_until(lambda: any("cannot write" in r.getMessage() for r in caplog.records))
    warnings = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert warnings == [
        f"cannot write the cache file {cache_path}: Read-only file system; lookups are not affected"
    ]
    assert cache_path.read_bytes() == held
    assert second.status().synced


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


DAMAGE: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "empty": (lambda p: b"", "{path}: empty file"),
    "not UTF-8": (lambda p: b"\xff\xfe" + p.read_bytes(), "{path}: not UTF-8 text (invalid start byte at byte 0)"),
    "another format": (lambda p: b'{"format": "something-else", "version": 1}\n',
                       "{path} line 1: not a droq-registry-client-cache file of version 1"),
    "a node missing": (lambda p: b"\n".join(_lines(p)[:-2]) + b"\n",
                       "{path} line 1: says 4 nodes at revision {revision}; 3 follow"),
    "a line that is not a node": (
        lambda p: b"\n".join([*_lines(p)[:2], b'{"etag": 5, "node": [], "components": {}}', *_lines(p)[3:]]),
        "{path} line 3: not a node with its components and ETag"),
    "a line that is not an object": (
        lambda p: b"\n".join([*_lines(p)[:4], b"[1, 2, 3]", *_lines(p)[5:]]),
        "{path} line 5: not a JSON object"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_file_is_ignored_with_one_warning_and_rewritten(
    registry: Callable[..., Registry], make_client: Callable[..., Client], tmp_path: Path,
    caplog: pytest.LogCaptureFixture, damage: str,
) -> None:
    reg = registry()
    cache_path = tmp_path / "registry-cache.jsonl"
    first = make_client(reg.url, cache_path=cache_path, **FAST)
    assert first.wait_synced(15)
    revision = first.status().revision
    first.close()
    assert [len(line) > 0 for line in _lines(cache_path)] == [True] * 5 + [False]  # header, 4 nodes, end
    damaged, message = DAMAGE[damage]
    cache_path.write_bytes(damaged(cache_path))

    reg.kill()
    with caplog.at_level("WARNING", logger="droq_registry_client"):
        blind = make_client(reg.url, cache_path=cache_path, **FAST)
        with pytest.raises(RegistryUnavailable):  # nothing known: never a damaged file's answers
            blind.node_for("Multiply")
    warnings = [r.getMessage() for r in caplog.records if "cache file" in r.getMessage()]
    assert warnings == [f"not using the cache file: {message.format(path=cache_path, revision=revision)}"]

    reg.start()
    assert blind.wait_synced(15)
    wait_until(lambda: _readable(cache_path))
    assert blind.node_for("Multiply") == reg.get("/api/v1/components/Multiply/node")


def _readable(path: Path) -> bool:
    try:
        return load(path) is not None
    except Exception:  # noqa: BLE001 - being rewritten
        return False
