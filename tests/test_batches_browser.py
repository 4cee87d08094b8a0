"""Issue 8 in a real browser: drag one PROD batch above another with the changelist's own script
(django-admin-sortable2, served by the portal) and see the new order in the next preview; open
the release report of a step run here. Screenshots go to docs/screenshots/.

Skipped, with the reason, where Chromium (/usr/bin/chromium) or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from releases import services
from releases.models import AuditEvent, Environment, UpdateGroup
from releases.states import StepState
from tests.support import R, configure_environments, make_user
from tests.test_engine_faults import prepare_prod, run_inline, start_prod

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshots are refreshed with PORTAL_SCREENSHOTS=1; otherwise they go to a scratch
# folder, so a test run leaves the checkout as it was.
SHOTS = (
    Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    if os.environ.get("PORTAL_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "portal-screenshots"
)
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.django_db(transaction=True),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
MANAGER = ("view_updategroup", "change_updategroup", "add_updategroup", "view_releaseplan",
           "add_releaseplan", "launch_step", "launch_protected", "finalize_release", "view_auditevent")  # fmt: skip


@pytest.fixture
def browser(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # the test's ORM calls beside Playwright
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def _login(browser, live_server, username: str):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    return page


def _preview_order(version: str) -> list[str]:
    out = StringIO()
    call_command("release", "preview", version, "--step", "14", "--json", stdout=out)
    (preview,) = json.loads(out.getvalue())
    return [batch["name"] for batch in preview["batches"]]


def _wait(condition, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_drag_a_batch_above_another_then_open_the_report(browser, live_server):
    sim = start_prod(200)
    try:
        configure_environments({"PROD": sim})
        user = make_user("manager", permissions=MANAGER)
        plan = services.create_plan("2.8.5", commit=R, user=user)
        step = prepare_prod(plan, user)
        groups = list(
            UpdateGroup.objects.filter(environment__name="PROD", step_number=14).order_by("position")
        )
        assert _preview_order(plan.version)[:3] == [g.name for g in groups[:3]]
        SHOTS.mkdir(parents=True, exist_ok=True)

        page = _login(browser, live_server, "manager")
        prod = Environment.objects.get(name="PROD")
        page.goto(
            f"{live_server.url}/admin/releases/updategroup/?environment__id__exact={prod.pk}&step_number=14"
        )
        page.wait_for_selector(f'.handle[pk="{groups[2].pk}"]')
        page.locator(f'.handle[pk="{groups[2].pk}"]').drag_to(page.locator("#result_list tbody tr").first)
        _wait(lambda: UpdateGroup.objects.get(pk=groups[2].pk).position == 0, what="the reorder to be saved")
        page.reload()
        page.screenshot(path=str(SHOTS / "update-groups-reorder.png"), full_page=True)

        assert _preview_order(plan.version)[:3] == [groups[2].name, groups[0].name, groups[1].name]
        event = AuditEvent.objects.get(action="updategroup_reorder")
        assert event.parameters["changes"][str(groups[2])] == [2, 0]
        assert page.locator("td.field-matching_sites").first.inner_text() != ""

        assert run_inline(step, user) == StepState.SUCCEEDED
        page.goto(f"{live_server.url}/admin/releases/releaseplan/{plan.pk}/report/")
        page.wait_for_selector("#release-report")
        assert page.locator('polyline.series[data-environment="PROD"]').count() == 1
        assert page.locator('tr.batch[data-step="14"]').count() == len(groups)
        assert (
            page.locator('tr.batch[data-step="14"]')
            .first.inner_text()
            .startswith(f"\tbatch 1: {groups[2].name}")
        )
        page.screenshot(path=str(SHOTS / "release-report.png"), full_page=True)
    finally:
        sim.stop()
