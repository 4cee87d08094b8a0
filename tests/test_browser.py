"""End to end in a real browser: Playwright drives Debian's Chromium against a live server, a real
Celery worker process and a simulated Atlas over HTTP. Screenshots go to docs/screenshots/.

Skipped, with the reason, where Chromium (/usr/bin/chromium) or Playwright is missing; `.ci/run`
installs both, so CI runs it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from releases import roles
from releases.models import AuditEvent, ReleasePlan
from tests.support import R, T, configure_environments, make_user

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshots are refreshed with PORTAL_SCREENSHOTS=1; otherwise they go to a scratch
# folder, so a test run leaves the checkout as it was.
SHOTS = (
    Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    if os.environ.get("PORTAL_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "portal-screenshots"
)
WIDTH = 1400

# CI (`.ci/run`) installs both and sets PORTAL_REQUIRE_BROWSER: there a missing browser fails.
REQUIRED = os.environ.get("PORTAL_REQUIRE_BROWSER") == "1"
if not CHROMIUM.exists() and REQUIRED:
    raise RuntimeError("PORTAL_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.django_db(transaction=True),
]
if REQUIRED:
    from playwright import sync_api
else:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements.txt)"
    )


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test are still
    # synchronous code, so Django's async guard does not apply to them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def _member(username: str, role: str):
    user = make_user(username, permissions=())
    roles.ensure_groups()  # a transactional test before may have flushed them
    user.groups.add(Group.objects.get(name=role))
    return user


def _login(browser, live_server, username: str):
    context = browser.new_context(viewport={"width": WIDTH, "height": 1000})
    page = context.new_page()
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    return page


def _launch_rows(page) -> list[int]:
    """The steps whose row offers a Launch control."""
    rows = page.locator("[data-step]:has([data-live-part=ops] :text-matches('^Launch'))")
    return sorted(int(rows.nth(i).get_attribute("data-step")) for i in range(rows.count()))


def _wait_for_next(page, text: str) -> None:
    """Wait until the live plan page names `text` (a prefix) as the next action."""
    page.wait_for_function(
        "t => (document.querySelector('[data-next]')?.innerText || '').startsWith(t)",
        arg=text,
        timeout=30_000,
    )


def _no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_a_release_manager_runs_the_dev_stage_in_the_browser(browser, live_server, simulator, celery_worker):
    sim = simulator("dev", password=os.environ["ATLAS_DEV_PASSWORD"], pool_refill_delay=8)
    configure_environments({"DEV": sim}, deploy_wait_seconds=2, pool_wait_seconds=30, verify=True)
    _member("manager", roles.RELEASE_MANAGERS)
    _member("viewer", roles.VIEWERS)
    SHOTS.mkdir(parents=True, exist_ok=True)

    page = _login(browser, live_server, "manager")
    assert "Express Release Portal" in page.inner_text("#site-name")
    page.goto(f"{live_server.url}/admin/releases/releaseplan/add/")
    page.fill("input[name=version]", "2.8.5")
    page.fill("input[name=release_commit]", R)
    page.click("input[name=_save]")
    page.wait_for_selector('[data-step="2"][data-state="pending"]')
    plan = ReleasePlan.objects.get(version="2.8.5")
    assert _no_horizontal_scroll(page)
    # One next action, and a Launch control only where a launch can start now (issue 21 §1–§2).
    assert page.inner_text("[data-next]") == "Launch stage DEV — steps 2–4"
    assert "Next: launch stage DEV — steps 2–4." in page.inner_text(".messagelist")
    assert _launch_rows(page) == [2]
    assert "Waits for steps 2–11" in page.inner_text('[data-step="12"]')

    page.click("a:has-text('Launch stage DEV')")
    page.wait_for_selector("#blast-radius")
    assert page.inner_text("#radius-deletions") != "0"
    assert _no_horizontal_scroll(page)
    page.screenshot(path=str(SHOTS / "launch-confirmation.png"), full_page=True)
    page.click("input[type=submit][value^=Yes]")
    page.wait_for_selector('[data-step="2"]')
    assert "then launch stage TEST — steps 5–6." in page.inner_text(".messagelist")
    page.evaluate("window.__notReloaded = true")

    # A running step's own page, in a second tab, while the plan page keeps updating itself.
    page.wait_for_selector('[data-step="3"][data-state="running"]', timeout=60_000)
    # Step 4 is queued in the running stage: no Launch for it, and the row says why.
    _wait_for_next(page, "Wait: step 3 is running on DEV")
    assert _launch_rows(page) == []
    assert "Queued in stage DEV" in page.inner_text('[data-step="4"]')
    step_page = page.context.new_page()
    step_page.goto(f"{live_server.url}/admin/releases/releaseplan/{plan.pk}/step/3/")
    step_page.wait_for_selector("#step-progress")
    # What the worker says it is doing, brought in by a fragment refresh (the pool refills in 8 s).
    step_page.wait_for_selector("#step-activity:has-text('waiting for the pool to refill')", timeout=20_000)
    assert _no_horizontal_scroll(step_page)
    step_page.screenshot(path=str(SHOTS / "step-running.png"), full_page=True)
    step_page.close()

    page.wait_for_selector('[data-step="4"][data-state="succeeded"]', timeout=120_000)
    assert page.evaluate("window.__notReloaded === true")  # fragments, not a reload
    assert page.get_attribute('[data-step="3"]', "data-state") == "succeeded"
    _wait_for_next(page, "Launch stage TEST — steps 5–6")
    assert "Finalize (step 7) opens when TEST steps 5–6 have succeeded." in page.inner_text("#plan-next")
    assert "Finalize opens when TEST steps 5–6 have succeeded" in page.inner_text('[data-step="7"]')
    assert _launch_rows(page) == [5]

    # Steps 5 and 6 are TEST's: skip them (a reason is required), then finalize.
    for number in (5, 6):
        row = page.locator(f'[data-step="{number}"]')
        row.locator("summary").click()
        row.locator("input[name=reason]").fill("TEST is exercised elsewhere in this test")
        row.locator("input[type=submit][value^=Skip]").click()
        page.wait_for_selector(f'[data-step="{number}"][data-state="skipped"]')
    assert page.inner_text("[data-next]").startswith("Finalize")
    page.fill("input[name=tag]", "2.8.5")
    page.fill("input[name=commit]", T)
    page.click("input[type=submit][value=Finalize]")
    page.wait_for_selector('[data-step="7"][data-state="succeeded"]')
    assert page.locator("input[type=submit][value=Finalize]").count() == 0  # recorded: no form left
    assert page.inner_text("[data-next]") == "Launch stage DEV — step 8"
    assert "Next: launch stage DEV — step 8." in page.inner_text(".messagelist")
    assert "After that: stage PROD — steps 12–14." in page.inner_text("#plan-next")
    assert _launch_rows(page) == [8]
    assert _no_horizontal_scroll(page)
    page.screenshot(path=str(SHOTS / "plan.png"), full_page=True)

    # A half-typed form survives the fragment refreshes around it.
    row = page.locator('[data-step="8"]')
    row.locator("summary").click()
    row.locator("input[name=reason]").fill("half-typed")
    for _ in range(2):
        before = page.get_attribute("#plan-live-root", "data-live-updated")
        page.wait_for_function(
            "b => document.querySelector('#plan-live-root').getAttribute('data-live-updated') !== b",
            arg=before,
            timeout=15_000,
        )
    assert row.locator("input[name=reason]").input_value() == "half-typed"

    page.goto(f"{live_server.url}/admin/releases/auditevent/")
    trail = page.inner_text("#result_list")
    assert "launch" in trail and "finalize" in trail and "manager" in trail
    assert AuditEvent.objects.filter(action="finalize", username="manager").exists()

    viewer = _login(browser, live_server, "viewer")
    viewer.goto(f"{live_server.url}/admin/releases/releaseplan/{plan.pk}/change/")
    viewer.wait_for_selector('[data-step="8"]')
    operations = viewer.locator("[data-live-part=ops]")
    assert operations.count() == 14
    assert viewer.locator("[data-live-part=ops] >> text=Launch").count() == 0
    assert viewer.locator("[data-live-part=ops] input[type=submit]").count() == 0
