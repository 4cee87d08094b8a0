"""The README's screenshots, taken from the demo: `manage.py runportal` (what `make run` starts) on a
scratch database, broker and ports, driven by Playwright in Debian's Chromium at 1400 px with the
demo's own accounts. A release manager creates 2.8.5, launches the DEV and TEST stages (for real:
nothing is skipped) and finalizes it; a PROD release manager reorders PROD's step 14 batches.

    .venv/bin/python docs/screenshots.py          # about five minutes; writes docs/screenshots/*.png

Needs /usr/bin/chromium (apt-get install chromium). Leaves the checkout's own database alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
WIDTH = 1400
WEB, DEV, TEST, PROD = 18100, 18101, 18102, 18103
PASSWORD = "demo"
# Realistic commits: the release branch's HEAD, then the --no-ff merge that finalizing records.
RELEASE_COMMIT = "3f9c2e1b7a64d05c8e21f4b9a0d37c6e5b18f2a4"
FINAL_COMMIT = "9b41d7e03c5a2f86e1d4b0c7a39e58f2d6c1b074"


def start_demo(scratch: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": f"sqlite:///{scratch / 'portal.sqlite3'}",
        "CELERY_BROKER_URL": f"filesystem://{scratch / 'broker'}",
        "ATLAS_DEV_URL": f"http://127.0.0.1:{DEV}/",
        "ATLAS_TEST_URL": f"http://127.0.0.1:{TEST}/",
        "ATLAS_PROD_URL": f"http://127.0.0.1:{PROD}/",
        "PORTAL_DEMO_PASSWORD": PASSWORD,
    }
    log = open(scratch / "runportal.log", "w")  # noqa: SIM115 - the demo's whole life
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "runportal", "--addr", f"127.0.0.1:{WEB}", "--prod-sites", "600"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while "Ready:" not in (scratch / "runportal.log").read_text():
        if demo.poll() is not None or time.monotonic() > deadline:
            raise SystemExit((scratch / "runportal.log").read_text()[-3000:])
        time.sleep(1)
    return demo


def login(browser, username: str):
    page = browser.new_context(viewport={"width": WIDTH, "height": 1000}).new_page()
    page.goto(f"http://127.0.0.1:{WEB}/admin/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    return page


def release(browser) -> str:
    page = login(browser, "release-manager")
    page.goto(f"http://127.0.0.1:{WEB}/admin/releases/releaseplan/add/")
    page.fill("input[name=version]", "2.8.5")
    page.fill("input[name=release_commit]", RELEASE_COMMIT)
    page.click("input[name=_save]")
    page.wait_for_selector('[data-step="2"][data-state="pending"]')
    plan_url = page.url

    # The DEV stage (its confirmation), then TEST's, and TEST's site step's page while it runs.
    page.click("a:has-text('Launch stage DEV')")
    page.wait_for_selector("#blast-radius")
    page.screenshot(path=str(SHOTS / "launch-confirmation.png"), full_page=True)
    page.click("input[type=submit][value^=Yes]")
    page.wait_for_selector('[data-step="4"][data-state="succeeded"]', timeout=600_000)
    page.click("a:has-text('Launch stage TEST')")
    page.wait_for_selector("#blast-radius")
    page.click("input[type=submit][value^=Yes]")
    page.wait_for_selector('[data-step="6"][data-state="running"]', timeout=300_000)
    step = page.context.new_page()
    step.goto(plan_url.replace("/change/", "/step/6/"))
    step.wait_for_selector("#step-activity", timeout=60_000)
    step.wait_for_timeout(8000)  # some sites verified, some updating at Atlas, the rest waiting
    step.screenshot(path=str(SHOTS / "step-running.png"))  # the progress; the site rows go on below
    step.close()
    page.wait_for_selector('[data-step="6"][data-state="succeeded"]', timeout=900_000)

    page.fill("input[name=tag]", "2.8.5")
    page.fill("input[name=commit]", FINAL_COMMIT)
    page.click("input[type=submit][value=Finalize]")
    page.wait_for_selector('[data-step="7"][data-state="succeeded"]')
    page.wait_for_timeout(3500)  # one live refresh, so the page is as an operator sees it
    page.screenshot(path=str(SHOTS / "plan.png"), full_page=True)
    page.click("a:has-text('Release report')")
    page.wait_for_selector("#release-report")
    page.screenshot(path=str(SHOTS / "release-report.png"), full_page=True)
    return plan_url


def reorder(browser) -> None:
    page = login(browser, "prod-manager")
    page.goto(f"http://127.0.0.1:{WEB}/admin/releases/updategroup/")
    page.click("#changelist-filter a:text-is('PROD')")
    page.click("#changelist-filter a:text-is('14')")
    page.wait_for_selector("#result_list .handle")
    rows = page.locator("#result_list tbody tr")
    rows.nth(2).locator(".handle").drag_to(rows.first)
    page.wait_for_selector("#reorder-status.rp-saved")
    page.screenshot(path=str(SHOTS / "update-groups-reorder.png"), full_page=True)


def main() -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="portal-screenshots-") as scratch:
        demo = start_demo(Path(scratch))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                release(browser)
                reorder(browser)
                browser.close()
        finally:
            demo.send_signal(signal.SIGINT)  # runportal stops its simulators, worker and web server
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
    print(f"screenshots written to {SHOTS}")


if __name__ == "__main__":
    main()
