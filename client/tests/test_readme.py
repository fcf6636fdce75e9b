"""The README's examples run as printed, against a real registry."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import HERE, Registry

README = HERE.parent / "README.md"
#: The project's README shows executors the same example.
PROJECT_README = HERE.parent.parent / "README.md"


def blocks(readme: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme.read_text(), re.DOTALL)


@pytest.mark.parametrize("readme", [README, PROJECT_README], ids=["client", "project"])
def test_the_sync_example_routes_from_memory(
    registry: Callable[..., Registry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], readme: Path,
) -> None:
    reg = registry()
    (code,) = [b for b in blocks(readme) if "RegistryClient(" in b and "Async" not in b]
    code = code.replace('["http://registry-0:8002", "http://registry-1:8002"]', repr([reg.url]))
    monkeypatch.chdir(tmp_path)  # the example's relative cache_path lands here
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code, run as printed
    expected = reg.get("/api/v1/components/Multiply/node")
    assert capsys.readouterr().out == f'{expected["node"]["api_url"]} runs {expected["module_path"]}\n'
    assert namespace["route"]("NoSuchComponent") == "local"  # answered from the closed client's last state
    assert (tmp_path / "registry-cache.jsonl").exists()


def test_the_async_example_runs(
    registry: Callable[..., Registry], capsys: pytest.CaptureFixture[str]
) -> None:
    reg = registry(env={"REGISTRY_API_TOKEN": "s3cret"})
    (code,) = [b for b in blocks() if "AsyncRegistryClient(" in b]
    code = code.replace('"http://registry:8002"', repr(reg.url)).replace('token="..."', 'token="s3cret"')
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code, run as printed
    asyncio.run(namespace["main"]())
    assert capsys.readouterr().out == reg.get("/api/v1/components/Multiply/node")["module_path"] + "\n"
