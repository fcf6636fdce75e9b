"""The dashboard, driven in Debian's headless Chromium against a real server process.

Chromium comes from Debian's package (`.ci/run` installs it); Playwright for Python drives
it, since `playwright install` cannot download a browser here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.files import ROOT, node_doc, write_json
from support.server import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
TIMEOUT_MS = 10_000

if not CHROMIUM.exists():
    message = "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
    if os.environ.get("CI"):
        raise RuntimeError(message)  # never pass CI without the browser tests
    pytest.skip(message, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
    assert dialogs == [], f"the page ran a script from node data: {dialogs}"


@pytest.fixture
def registry(real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path) -> Callable[..., ServerProcess]:
    def start(**env: str) -> ServerProcess:
        base = {"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db"),
                "LOG_LEVEL": "warning"}
        return server({**base, **env}, tmp_path / "server.log")

    return start


def node_row(page: Page, node_id: str) -> Any:
    return page.locator(f"#nodes tr.node[data-node-id='{node_id}']")


def test_lists_the_four_real_nodes(page: Page, registry: Callable[..., ServerProcess], real_assets: Path) -> None:
    srv = registry()
    page.goto(f"{srv.url}/ui/")
    expected = sorted(p.stem for p in real_assets.glob("*.json"))
    expect(page.locator("#nodes tr.node")).to_have_count(len(expected))
    assert page.locator("#nodes tr.node").evaluate_all("rows => rows.map(r => r.dataset.nodeId)") == expected
    expect(page.locator("#stat-nodes")).to_have_text(str(len(expected)))
    expect(page.locator("#stat-watcher")).to_have_text("watching")
    # A click (or Enter) opens the node's components with their details.
    node_row(page, "dfx-math-executor-node").click()
    details = page.locator("tr.details[data-details-for='dfx-math-executor-node']")
    expect(details.locator("tbody tr")).to_have_count(1)
    expect(details.locator("tbody tr td")).to_have_text(
        ["Multiply", "dfx.math.component.multiply", "DFX Multiply", "Multiplies two numbers together"]
    )
    node_row(page, "dfx-hf-models-node").focus()
    page.keyboard.press("Enter")
    expect(page.locator("tr.details[data-details-for='dfx-hf-models-node'] tbody tr")).to_have_count(3)


def test_search_for_textinput_finds_its_node(page: Page, registry: Callable[..., ServerProcess]) -> None:
    srv = registry()
    page.goto(f"{srv.url}/ui/")
    page.locator("#search").fill("TextInput")
    first = page.locator("#search-results li").first
    expect(first.locator("strong")).to_have_text("TextInputComponent")
    expect(first.locator("[data-chosen]")).to_have_text("lfx-runtime-executor-node")
    # A class two nodes declare shows the other candidate too.
    page.locator("#search").fill("SaveToFile")
    expect(page.locator("#search-results li").first).to_contain_text("other candidates: lfx-tool-executor-node")


def test_new_node_file_appears_without_reload_and_is_highlighted(
    page: Page, registry: Callable[..., ServerProcess], real_assets: Path
) -> None:
    srv = registry()
    page.goto(f"{srv.url}/ui/")
    expect(page.locator("#live")).to_contain_text("live")
    page.evaluate("window.__marker = 'same page'")
    write_json(real_assets / "fresh-node.json", node_doc("fresh-node", {"FreshComponent": "fresh.mod"}))
    row = node_row(page, "fresh-node")
    expect(row).to_be_visible(timeout=2_000)  # within a second of the commit, plus the watcher
    expect(row).to_have_class("node flash")
    assert page.evaluate("window.__marker") == "same page", "the page was reloaded"
    (real_assets / "fresh-node.json").unlink()
    expect(row).to_have_count(0, timeout=2_000)


def test_broken_edit_shows_under_problems_while_the_node_stays_listed(
    page: Page, registry: Callable[..., ServerProcess], real_assets: Path
) -> None:
    srv = registry()
    page.goto(f"{srv.url}/ui/")
    expect(node_row(page, "dfx-math-executor-node")).to_be_visible()
    (real_assets / "dfx-math-executor-node.json").write_text('{"node_id": "dfx-math-executor-node", "name": ')
    problem = page.locator("#problems li[data-path='dfx-math-executor-node.json']")
    expect(problem).to_contain_text("error", timeout=2_000)
    expect(problem).to_contain_text("not valid JSON")
    expect(problem).to_contain_text("still serving the last good version of dfx-math-executor-node")
    expect(node_row(page, "dfx-math-executor-node")).to_be_visible()
    expect(page.locator("#stat-errors")).to_have_text("1")


def test_html_in_node_files_is_shown_as_text(
    page: Page, registry: Callable[..., ServerProcess], real_assets: Path
) -> None:
    hostile = "<script>window.__owned = 1; alert('owned')</script><img src=x onerror=alert(2)>"
    write_json(real_assets / "evil.json", node_doc(
        "evil-node",
        {"EvilComponent": {"path": "evil.mod", "description": hostile, "display_name": "<b>bold</b>"}},
        name="<i>Evil</i>", description=hostile,
    ))
    srv = registry()
    page.goto(f"{srv.url}/ui/")
    row = node_row(page, "evil-node")
    expect(row.locator("td").nth(1)).to_have_text("<i>Evil</i>")
    row.click()
    details = page.locator("tr.details[data-details-for='evil-node'] tbody tr td")
    expect(details).to_have_text(["EvilComponent", "evil.mod", "<b>bold</b>", hostile])
    page.locator("#search").fill("EvilComp")
    expect(page.locator("#search-results li").first).to_contain_text(hostile)
    assert page.evaluate("window.__owned") is None
    assert page.locator("#nodes i, #nodes b, #nodes img, #search-results img").count() == 0


def test_with_a_token_the_page_works_once_the_token_is_entered(
    page: Page, registry: Callable[..., ServerProcess], real_assets: Path
) -> None:
    srv = registry(REGISTRY_API_TOKEN="dashboard-secret")
    page.goto(f"{srv.url}/ui/")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    page.locator("#token-input").fill("wrong")
    page.locator("#token-form button").click()
    expect(page.locator("#token-error")).to_have_text("The token was refused.")
    page.locator("#token-input").fill("dashboard-secret")
    page.locator("#token-form button").click()
    expect(page.locator("#nodes tr.node")).to_have_count(4)
    # The live stream carries the token too: a new file shows up without a reload.
    write_json(real_assets / "token-node.json", node_doc("token-node"))
    expect(node_row(page, "token-node")).to_be_visible(timeout=2_000)
    # Kept for the browser session: a reload does not ask again.
    page.reload()
    expect(page.locator("#nodes tr.node")).to_have_count(5)
    expect(page.locator("#token-form")).to_be_hidden()


def test_readable_on_a_phone(browser: Browser, registry: Callable[..., ServerProcess]) -> None:
    srv = registry()
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(f"{srv.url}/ui/")
        expect(page.locator("#nodes tr.node")).to_have_count(4, timeout=TIMEOUT_MS)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    finally:
        context.close()


def test_screenshot_for_the_readme(
    page: Page, registry: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path
) -> None:
    """The README's picture; written to docs/ with DROQ_UPDATE_SCREENSHOT=1 (otherwise to a
    temporary folder, so a test run leaves the checkout as it was)."""
    (real_assets / "broken-example.json").write_text('{"node_id": "broken-example", "name": "x", "componets": {}}')
    srv = registry()
    page.goto(f"{srv.url}/ui/")
    node_row(page, "dfx-math-executor-node").click()
    expect(page.locator("tr.details tbody tr")).to_have_count(1)
    page.locator("#search").fill("TextInput")
    expect(page.locator("#search-results li").first).to_be_visible()
    expect(page.locator("#problems li")).to_have_count(1)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("DROQ_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT)
