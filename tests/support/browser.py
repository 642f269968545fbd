"""A person approving in the Prefect UI: Playwright driving Debian's Chromium (no browser is
downloaded: Playwright's own builds need the internet). The approver reads the question in the
form, signs it with their key on their own machine (here: in the test process) and submits."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


@dataclass
class Answered:
    flow_run_id: str
    question: str
    report_digest: str
    form_screenshot: Path | None
    answered_at: float = 0.0  # unix time the form was submitted


def answer_in_browser(ui_url: str, flow_run_id: str, approver: str, approve: bool, comment: str,
                      sign, screenshot: Path | None = None, credential: str | None = None) -> Answered:
    """Open the paused run's page, click Resume, read the signing command the form shows, fill
    the form with `sign(run_id, question, digest, approve)` (or a given `credential`), submit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to run its sandbox as root, and the tests run as root.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}")
            page.get_by_role("button", name="Resume").click(timeout=60_000)
            dialog = page.get_by_role("dialog")
            command = dialog.locator("pre code").first.inner_text(timeout=30_000)
            found = re.search(r"sign-approval (\S+) (\S+) ([0-9a-f]{64})", command)
            assert found, f"the form shows no signing command: {command!r}"
            run_id, question, digest = found.groups()
            if approve:
                dialog.get_by_role("switch").first.click()
            fields = dialog.locator("textarea, input[type=text]")
            fields.nth(0).fill(approver)
            fields.nth(1).fill(credential if credential is not None else sign(run_id, question, digest, approve))
            fields.nth(2).fill(comment)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            dialog.get_by_role("button", name="Submit").click()
            answered_at = time.time()
            page.get_by_role("dialog").wait_for(state="hidden", timeout=30_000)
        finally:
            browser.close()
    return Answered(run_id, question, digest, screenshot, answered_at)


def screenshot_page(url: str, path: Path, wait_text: str | None = None, tab: str | None = None) -> Path:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            if tab:
                page.get_by_role("tab", name=tab).or_(page.get_by_text(tab, exact=True)).first.click(timeout=60_000)
            if wait_text:
                page.get_by_text(wait_text).first.wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
    return path
