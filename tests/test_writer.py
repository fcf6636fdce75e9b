"""One owner of mutable state: every reconcile and every database step runs on the writer
thread, one at a time, in the order asked; the database connection is usable only there;
the process's policy after a commit runs there, after commits only."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.testclient import TestClient

from droq_registry.app import create_app
from droq_registry.server import freeze_after_commit
from droq_registry.store import StorageFault
from droq_registry.writer import WriterThread
from support.files import node_doc, write_json
from support.http import make_settings, reconcile_now
from support.polling import wait_until


def test_steps_asked_for_at_once_run_one_at_a_time_on_one_thread_in_the_order_asked() -> None:
    ran: list[tuple[int, str, int]] = []
    busy = threading.Lock()

    def step(n: int) -> int:
        assert busy.acquire(blocking=False), "two steps ran at once"
        try:
            ran.append((n, threading.current_thread().name, threading.get_ident()))
            time.sleep(0.001)  # give a second step every chance to overlap
        finally:
            busy.release()
        return n * n

    async def main() -> list[int]:
        thread = WriterThread()
        results: dict[int, int] = {}

        async def ask(n: int) -> None:
            results[n] = await thread.call(step, n)

        try:
            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(ask, n)
                    await anyio.lowlevel.checkpoint()  # each call is queued before the next task starts
        finally:
            await thread.stop()
        return [results[n] for n in range(20)]

    assert anyio.run(main) == [n * n for n in range(20)]
    assert [n for n, _, _ in ran] == list(range(20))
    assert {(name, ident) for _, name, ident in ran} == {(ran[0][1], ran[0][2])}
    assert ran[0][1] == "droq-registry-writer"
    assert ran[0][2] != threading.get_ident()


def test_a_step_that_raises_raises_in_its_caller_and_the_next_step_still_runs() -> None:
    def failing() -> None:
        raise StorageFault("disk_full", "the disk is full")

    async def main() -> tuple[str, str]:
        thread = WriterThread()
        try:
            with pytest.raises(StorageFault) as caught:
                await thread.call(failing)
            return caught.value.cause, await thread.call(lambda: "next")
        finally:
            await thread.stop()

    assert anyio.run(main) == ("disk_full", "next")


def test_a_cancelled_caller_waits_for_its_step_to_end_before_what_follows_runs() -> None:
    events: list[str] = []
    started, release = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(10)
        events.append("slow ended")

    async def main() -> None:
        thread = WriterThread()
        scope = anyio.CancelScope()

        async def caller() -> None:
            with scope:
                await thread.call(slow)
            events.append("caller went on")

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await anyio.to_thread.run_sync(started.wait, 10)
                scope.cancel()
                for _ in range(100):  # the loop runs on; the cancelled caller must not
                    await anyio.lowlevel.checkpoint()
                events.append("cancelled")
                release.set()
            await thread.call(lambda: events.append("next step"))
        finally:
            await thread.stop()

    anyio.run(main)
    assert events == ["cancelled", "slow ended", "caller went on", "next step"]


def test_the_database_connection_refuses_a_pass_from_any_thread_but_the_writer(
    assets: Path, client_for: Any
) -> None:
    write_json(assets / "a.json", node_doc("a"))
    client: TestClient = client_for(assets)
    registry = client.app.state.registry  # type: ignore[attr-defined]
    write_json(assets / "b.json", node_doc("b"))

    with pytest.raises(StorageFault) as caught:
        registry.reconcile()  # from the test's thread: the connection is not this thread's
    assert isinstance(caught.value.__cause__, sqlite3.ProgrammingError)
    assert "same thread" in str(caught.value)
    assert registry.revision == 1  # nothing was written
    assert client.get("/api/v1/nodes/b").status_code == 404

    result = reconcile_now(client)  # the same pass on the writer thread commits
    assert (result.revision, result.counts) == (2, {"added": 1, "updated": 0, "removed": 0, "errors": 0})
    assert client.get("/api/v1/nodes/b").status_code == 200
    assert registry.status.last_error is None


def test_the_process_policy_runs_on_the_writer_thread_after_each_commit_and_only_then(assets: Path) -> None:
    calls: list[tuple[str, int]] = []
    app = create_app(make_settings(assets), after_commit=lambda: calls.append(
        (threading.current_thread().name, app.state.registry.revision)))
    write_json(assets / "a.json", node_doc("a"))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        assert calls == [("droq-registry-writer", 1)]
        writer = app.state.writer
        assert client.portal is not None
        assert client.portal.call(writer.run).changed is False
        write_json(assets / "b.json", node_doc("b"))
        assert client.portal.call(writer.run).revision == 2
    assert calls == [("droq-registry-writer", 1), ("droq-registry-writer", 2)]


def test_the_garbage_collector_policy_freezes_what_survives_a_commit() -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(100)]
    try:
        freeze_after_commit()
        assert gc.get_freeze_count() >= len(survivor)
    finally:
        gc.unfreeze()


def test_stopping_the_app_closes_the_database_on_the_writer_thread_and_ends_it(assets: Path) -> None:
    write_json(assets / "a.json", node_doc("a"))
    app = create_app(make_settings(assets))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        store = app.state.registry.store
        thread = app.state.writer.thread
        assert thread.is_alive()
    assert not thread.is_alive()
    with pytest.raises(StorageFault, match="the database is not open"):
        store.load()
