"""The dashboard of `taskyard serve`, in headless Chromium (Debian's, driven by Playwright): a token entered
once, a Task created from the form whose log arrives line by line and whose phase changes without a
reload, another cancelled with its button, the list filtered by phase. With TASKYARD_SCREENSHOTS=<dir>
it saves the pages there (docs/images holds the ones of the documentation)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.integration.conftest import Kube, OperatorProcess
from tests.integration.test_task_api import ROBOT_RULES, service_account_token

pytestmark = pytest.mark.integration

DASHBOARD_RULES = [
    *ROBOT_RULES,
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": ["taskyard.dev"], "resources": ["agents"], "verbs": ["list"]},
]


@pytest.fixture
def browser_page() -> Iterator[Page]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run hack/install-deps.sh"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            yield page
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> None:
    directory = os.environ.get("TASKYARD_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"dashboard-{name}.png"), full_page=True)


def test_the_dashboard_creates_follows_and_cancels_tasks(
    kube: Kube, shell_agent: str, operator: OperatorProcess, api_url: str, browser_page: Page
) -> None:
    page = browser_page
    token = service_account_token(kube, "viewer", DASHBOARD_RULES)
    page.goto(f"{api_url}/")
    page.fill("#token", token)
    page.click("#sign-in-form button")
    page.wait_for_selector("#tasks-view:not([hidden])")
    assert page.input_value("#namespace") == kube.namespace  # the token's own namespace

    # A Task from the form: its log arrives line by line while it runs, its phase changes by itself.
    page.click("#new-task-link")
    page.fill("#new-agent", shell_agent)
    page.fill("#new-prompt", "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done")
    page.click("#create")
    page.wait_for_selector("#task-view:not([hidden])")
    seen: list[tuple[float, int, str]] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        lines = page.locator("#log .log-line").count()
        phase = page.inner_text("#task-phase")
        if not seen or seen[-1][1:] != (lines, phase):
            seen.append((time.monotonic(), lines, phase))
        if phase == "Succeeded" and lines == 6:
            break
        time.sleep(0.2)
    counts = [lines for _, lines, _ in seen]
    assert counts[-1] == 6, seen
    assert len({count for count in counts if 0 < count < 6}) >= 3, seen  # came one by one, not at once
    assert any(phase == "Running" for _, _, phase in seen) and seen[-1][2] == "Succeeded", seen
    assert page.locator("#log .log-line").all_inner_texts() == [f"tick {i}" for i in range(1, 7)]
    page.wait_for_selector("#events td:text('Admitted')")
    screenshot(page, "task")
    finished = page.inner_text("#task-name")

    # Another one, cancelled with its button.
    page.goto(f"{api_url}/dashboard/#/new")
    page.fill("#new-agent", shell_agent)
    page.fill("#new-prompt", "echo working; sleep 300")
    page.click("#create")
    page.wait_for_selector("#log .log-line:text('working')", timeout=120_000)
    page.click("#cancel")
    page.wait_for_selector("#task-phase:text('Cancelled')", timeout=120_000)
    cancelled = page.inner_text("#task-name")
    assert kube.task(cancelled)["status"]["phase"] == "Cancelled"

    # The list, with both, filtered by phase.
    page.goto(f"{api_url}/dashboard/#/")
    page.wait_for_selector(f"#tasks tr[data-task='{cancelled}']")
    assert page.inner_text(f"#tasks tr[data-task='{finished}'] td:nth-child(2)") == "Succeeded"
    screenshot(page, "tasks")
    page.select_option("#filter-phase", "Cancelled")
    shown = page.locator("#tasks tbody tr").evaluate_all("rows => rows.map(r => r.dataset.task)")
    assert shown == [cancelled]
    page.goto(f"{api_url}/dashboard/#/new")
    screenshot(page, "new")


def test_the_dashboard_sends_no_one_in_without_a_token_the_cluster_accepts(
    api_url: str,
    browser_page: Page,
) -> None:
    page = browser_page
    page.goto(f"{api_url}/dashboard/")
    page.wait_for_selector("#sign-in:not([hidden])")
    page.fill("#token", "not-a-token")
    page.click("#sign-in-form button")
    page.wait_for_selector("#sign-in-error:text('Unauthorized')")
    assert page.is_hidden("#tasks-view")
