"""`scan.classify`: which files a watcher batch asks the next pass to read, and whether
they are all it needs to look at (a targeted pass) or the folder must be scanned.

A table of batches, each with the whole answer. The folder is real (tmp_path), because
whether a name is a folder or a symbolic link is what the batch cannot say.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from droq_registry.model import Source
from droq_registry.scan import classify


def uses(path: str, *deps: str) -> Source:
    """A node file whose components live in the files `deps` (absolute paths)."""
    return Source(path=path, state="ok", node_id=path.removesuffix(".json"), packed=None, content_hash="h",
                  deps=deps)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "nodes"
    folder.mkdir()
    (folder / "sub").mkdir()
    (folder / "components").mkdir()
    (folder / "link.json").symlink_to(folder / "sub")
    return folder


#: (batch of names relative to the folder, with "/" for the folder itself and "^" for a name
#: beside it), the names forced, whether the pass may be targeted.
BATCHES = [
    pytest.param(["a.json"], {"a.json"}, True, id="a node file is read, alone"),
    pytest.param(["a.json", "b.json"], {"a.json", "b.json"}, True, id="several node files"),
    pytest.param(["a.json", ".a.json.swp", "a.json~", "4913"], {"a.json"}, True,
                 id="an editor's temporary files beside the node file cost nothing"),
    pytest.param([".a.json.tmp"], set(), False, id="only a temporary file: nothing named, so no targeted pass"),
    pytest.param(["notes.txt"], set(), False, id="an unrelated file alone"),
    pytest.param(["a.json", "..data"], {"a.json"}, False, id="Kubernetes' ..data swap asks for a full scan"),
    pytest.param(["..2026_01_01_00_00_00.1234"], set(), False, id="a ConfigMap's timestamped folder"),
    pytest.param(["a.json", "sub"], {"a.json"}, False, id="a folder beside the node files asks for a full scan"),
    pytest.param(["link.json"], {"link.json"}, True,
                 id="a node file name is read even when it is a link (the read says what it is)"),
    pytest.param(["sub/x.json"], set(), False, id="a change inside a subfolder asks for a full scan"),
    pytest.param(["/"], set(), False, id="the folder itself"),
    pytest.param(["components/shared.json"], {"a.json", "b.json"}, True,
                 id="a components file forces every node file that uses it"),
    pytest.param(["components/other.json"], set(), False, id="a components file nobody uses is a subfolder change"),
    pytest.param(["^elsewhere.json"], set(), False, id="a path outside the folder is ignored"),
]


@pytest.mark.parametrize(("batch", "forced", "targeted"), BATCHES)
def test_classify_names_what_to_read_and_whether_that_is_all(
    folder: Path, batch: list[str], forced: set[str], targeted: bool
) -> None:
    shared = str(folder / "components" / "shared.json")
    sources = {"a.json": uses("a.json", shared), "b.json": uses("b.json", shared), "c.json": uses("c.json")}

    def absolute(name: str) -> str:
        if name == "/":
            return str(folder)
        if name.startswith("^"):
            return str(folder.parent / name[1:])
        return str(folder / name)

    assert classify({absolute(n) for n in batch}, folder, sources) == (forced, targeted)


def test_classify_without_a_batch_asks_for_a_full_scan(folder: Path) -> None:
    assert classify(None, folder, {}) == (set(), False)


def test_classify_reads_relative_names_against_the_working_directory(folder: Path) -> None:
    before = os.getcwd()
    os.chdir(folder)
    try:
        assert classify({"a.json"}, Path("."), {}) == ({"a.json"}, True)
    finally:
        os.chdir(before)
