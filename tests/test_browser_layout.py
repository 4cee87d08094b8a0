"""Issue 21 §5: every admin page is readable at 1400 px. A superuser visits each page of a
release in progress (changelists, change forms, the plan page with a refused finalize, a step page,
a launch confirmation, an approval, the report, the audit trail, environments, update groups,
launch requests) and the browser measures: no horizontal scroll, no table header or scrolled box
whose text is cut off, and WCAG AA contrast (4.5:1, 3:1 for large text) for every visible text.

Skipped, with the reason, where Chromium (/usr/bin/chromium) or Playwright is missing (the way
tests/test_browser.py skips).
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from releases import services
from releases.models import AuditEvent, Environment, LaunchRequest, ReleasePlan, SiteResult, UpdateGroup
from releases.states import StepState
from tests.support import R, code_items, configure_environments, make_user
from tests.test_browser import WIDTH, browser, pytestmark  # noqa: F401  (the browser fixture, the skips)

# What the browser measures on a page: the document's width, boxes whose content is cut off (a
# table header, or a box that scrolls sideways, such as the changelist's results), and text whose
# contrast with its effective background is below WCAG AA.
MEASURE = """
() => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return [0, 0, 0, 0];
    const p = m[1].split(',').map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom) => {  // `top` composited over the opaque `bottom`
    const a = top[3];
    return [0, 1, 2].map(i => top[i] * a + bottom[i] * (1 - a)).concat([1]);
  };
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let result = [255, 255, 255, 1];
    for (const layer of layers.reverse()) result = over(layer, result);
    return result;
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map(v => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
  };
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const out = {width: document.scrollingElement.scrollWidth, cut: [], contrast: []};
  for (const el of document.querySelectorAll('body *')) {
    if (!visible(el) || ['TEXTAREA', 'SELECT', 'OPTION', 'SCRIPT', 'STYLE'].includes(el.tagName)) continue;
    // Text only for screen readers, a disabled control (WCAG exempts it), text moved off screen.
    if (el.closest('.visually-hidden') || el.disabled) continue;
    const s = getComputedStyle(el);
    if (parseFloat(s.textIndent) < -100) continue;
    const inHeader = el.closest('th, thead');
    const scrolls = s.overflowX !== 'visible' && s.overflowX !== 'clip' || inHeader;
    if (scrolls && el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0) {
      const columns = Array.from(el.querySelectorAll('thead th')).map(
        th => th.innerText.trim() + ' ' + Math.round(th.getBoundingClientRect().width)).join(', ');
      out.cut.push(describe(el) + ' "' + (columns || el.innerText.trim().slice(0, 60)) + '" ' +
        el.scrollWidth + '>' + el.clientWidth);
    }
    if (el.tagName === 'TH' && el.closest('thead')) {  // a column header's word split: "SUCCEED / ED"
      for (const node of [el, ...el.querySelectorAll('*')]) {
        for (const child of Array.from(node.childNodes).filter(n => n.nodeType === 3)) {
          for (const m of child.textContent.matchAll(/[^\\s\\/-]+/g)) {
            const range = document.createRange();
            range.setStart(child, m.index);
            range.setEnd(child, m.index + m[0].length);
            const lines = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top)));
            if (lines.size > 1) out.cut.push('th "' + m[0] + '" broken across lines');
          }
        }
      }
    }
    const text = el.tagName === 'INPUT' && ['submit', 'button'].includes(el.type) ? el.value :
      Array.from(el.childNodes).filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    if (!text || parseFloat(s.opacity) === 0) continue;
    const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight) >= 700;
    const large = size >= 24 || (size >= 18.66 && bold);
    const fg = over(parse(s.color), background(el));
    const value = ratio(fg, background(el));
    if (value < (large ? 3 : 4.5)) {
      out.contrast.push(describe(el) + ' "' + text.slice(0, 40) + '" ' + value.toFixed(2) + ':1 (' + s.color + ')');
    }
  }
  return out;
}
"""


def _right_edge(page, selector: str) -> float:
    return page.locator(selector).first.evaluate("e => e.getBoundingClientRect().right")


def _left_edge(page, selector: str) -> float:
    return page.locator(selector).first.evaluate("e => e.getBoundingClientRect().left")


def _measure(page, what: str) -> None:
    found = page.evaluate(MEASURE)
    problems = []
    if found["width"] > WIDTH:
        problems.append(f"the page is {found['width']} px wide")
    problems += [f"cut off: {c}" for c in found["cut"]]
    problems += [f"contrast: {c}" for c in found["contrast"]]
    assert not problems, f"{what} ({page.url}) at {WIDTH} px:\n  " + "\n  ".join(problems)


LONG_MESSAGE = (
    "refused: ops-lead may not launch steps on the protected environment PROD: ask a PROD release "
    "manager; the confirmation named 2,214 sites in 9 batches and Atlas answered 412 for "
    "express/sites/p1a2b3c4d5e6f7 while the step was paused at its failure threshold"
)


def _release_in_progress(simulator) -> ReleasePlan:
    """A release whose DEV stage ran (with failures), TEST waiting, a PROD launch requested."""
    configure_environments({name: simulator.of(name, sites=60) for name in ("DEV", "TEST", "PROD")})
    Environment.objects.filter(name="PROD").update(two_person=True)
    admin = make_user("admin")
    get_user_model().objects.filter(pk=admin.pk).update(is_superuser=True)
    admin.refresh_from_db()
    other = make_user("prod-manager")
    plan = services.create_plan("2.8.5", commit=R, user=admin)
    start = timezone.now() - timedelta(minutes=20)
    for number in (2, 3, 4):
        plan.steps.filter(number=number).update(
            state=StepState.SUCCEEDED,
            launched_by_username="admin",
            started_at=start + timedelta(minutes=number),
            finished_at=start + timedelta(minutes=number + 1),
        )
    step3 = plan.steps.get(number=3)
    SiteResult.objects.bulk_create(
        SiteResult(
            step=step3,
            site_id=f"{i:024x}",
            sid=f"p1{i:06x}",
            path=f"department-of-very-long-names-{i}",
            batch_name="all available sites",
            state="failed" if i < 3 else "succeeded",
            attempts=2,
            http_status=412 if i < 3 else 200,
            message="precondition failed: the site changed since it was read" if i < 3 else "",
            response={
                "_status": "ERR",
                "_error": {"code": 412, "message": "Client and server etags don't match"},
            }
            if i < 3
            else None,
            finished_at=start + timedelta(minutes=4),
        )
        for i in range(12)
    )
    for _ in range(3):
        AuditEvent.record(
            "launch", user=admin, step=step3, outcome=AuditEvent.Outcome.REFUSED, message=LONG_MESSAGE
        )
    LaunchRequest.objects.create(
        step=plan.steps.get(number=12), requested_by=other, requested_by_username="prod-manager", stage=True
    )
    UpdateGroup.objects.filter(environment__name="PROD", step_number=14).update(
        updated_by="prod-manager", edited=True
    )
    return plan


def _admin_page(chromium, live_server):
    """A page at 1400 px, logged in as the admin."""
    page = chromium.new_context(viewport={"width": WIDTH, "height": 1000}).new_page()
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    return page


def test_every_admin_page_is_readable_at_1400_px(browser, live_server, simulator):  # noqa: F811
    plan = _release_in_progress(simulator)
    page = _admin_page(browser, live_server)
    base = f"{live_server.url}/admin/releases/releaseplan/{plan.pk}"
    prod = Environment.objects.get(name="PROD")
    visited = []

    def visit(url: str, what: str) -> None:
        page.goto(url if url.startswith("http") else live_server.url + url)
        page.wait_for_load_state("networkidle")
        visited.append(url)
        _measure(page, what)

    # Every changelist and add form the index links to, and the first row of each changelist.
    page.goto(f"{live_server.url}/admin/")
    links = page.eval_on_selector_all(
        "#content-main a[href^='/admin/']", "as => as.map(a => a.getAttribute('href'))"
    )
    for link in sorted(set(links)):
        visit(link, link)
        if link.endswith("/add/"):
            continue
        first = page.locator("#result_list tbody tr th a, #result_list tbody tr td a").first
        if first.count():
            visit(first.get_attribute("href"), f"the first row of {link}")

    # The audit trail: a time on one line, the message column beside it (not behind the filters).
    visit("/admin/releases/auditevent/", "the audit trail")
    at = page.locator("#result_list .field-at_display a").first
    assert at.evaluate("e => e.getClientRects().length") == 1  # an inline box per line
    assert _right_edge(page, "#result_list td.field-message") <= _left_edge(page, "#changelist-filter")

    # Update groups: a drag renumbers "#" at once and says it is saved; "edited" is a fact, not an error.
    visit(
        f"/admin/releases/updategroup/?environment__id__exact={prod.pk}&step_number=14",
        "PROD step 14's groups",
    )
    assert page.locator("#result_list .field-edited_display").first.inner_text() == "by prod-manager"
    assert page.locator("#result_list img[alt=False]").count() == 0
    assert page.locator("input[name=_save]").get_attribute("value") == "Save the enabled boxes"
    third = page.locator("#result_list tbody tr").nth(2)
    moved = third.locator(".field-name").inner_text()
    third.locator(".handle").drag_to(page.locator("#result_list tbody tr").first)
    page.wait_for_selector("#reorder-status.rp-saved:has-text('Saved')")
    numbers = page.locator("#result_list .field-position_shown").all_inner_texts()
    assert numbers == [str(i) for i in range(len(numbers))]
    assert page.locator("#result_list tbody tr").first.locator(".field-name").inner_text() == moved
    assert UpdateGroup.objects.get(environment=prod, step_number=14, name=moved).position == 0
    _measure(page, "PROD step 14's groups after a drag")
    visit(f"{base}/step/3/", "a step with failures")
    visit(f"{base}/step/5/", "a pending step")
    pending = page.locator("#step-progress h2 .rp-state")
    assert pending.inner_text() == "Pending"
    visit(f"{base}/step/5/launch/?stage=1", "the TEST stage's launch confirmation")
    visit(f"{base}/step/12/approve/", "an approval")
    visit(f"{base}/report/", "the release report")

    # The plan page, with the finalize gate refusing a mistyped commit (a long unbroken value).
    plan.steps.filter(number__in=(5, 6)).update(state=StepState.SKIPPED)
    visit(f"{base}/change/", "the plan page")
    assert "updates itself" in page.inner_text("#release-steps h2 .rp-quiet")  # measured above
    page.fill("input[name=tag]", "2.8.5")
    page.fill("input[name=commit]", "c" * 39)
    page.click("input[type=submit][value=Finalize]")
    page.wait_for_selector("#finalize-form .errornote")
    page.wait_for_load_state("networkidle")
    _measure(page, "the plan page with a refused finalize")
    assert {
        "/admin/releases/auditevent/",
        "/admin/releases/environment/",
        "/admin/releases/launchrequest/",
    } <= set(visited)


def test_roll_back_on_the_step_page_and_its_confirmation_are_readable_at_1400_px(  # noqa: F811
    browser, live_server, simulator  # noqa: F811
):  # fmt: skip
    """PROD's step 14 paused with two sites failed after their update ran: the step page offers
    Roll back for them, and its confirmation names each site's earlier version, the database
    warning and the typed inputs, all at 1400 px without scrolling sideways or clipped text."""
    prod_sim = simulator.of("PROD", sites=60)
    configure_environments({"PROD": prod_sim})
    admin = make_user("admin")
    get_user_model().objects.filter(pk=admin.pk).update(is_superuser=True)
    plan = services.create_plan("2.8.5", commit=R, user=admin)
    earlier = code_items(prod_sim, **{"meta.code_type": "profile"})[0]
    step = plan.steps.get(number=14)
    step.state, step.message = (
        StepState.PAUSED,
        "2 succeeded, 2 failed: retry the failed sites, skip or abort",
    )
    step.save()
    then = timezone.now() - timedelta(hours=1)
    SiteResult.objects.bulk_create(
        SiteResult(
            step=step,
            site_id=f"{i:024x}",
            path=f"department-of-very-long-names-{i}",
            batch_name="installed group 0",
            state="failed" if i < 2 else "succeeded",
            previous_profile=str(earlier["_id"]),
            patched_at=then,
            reported_version="2.8.5",
            reported_error=i < 2,
            reported_at=then + timedelta(minutes=1),
            finished_at=then + timedelta(minutes=16),
            page_status=500 if i < 2 else 200,
            message="verification: not verified within 900 s of its PATCH: its page answered 500"
            if i < 2
            else "",
        )  # fmt: skip
        for i in range(4)
    )
    page = _admin_page(browser, live_server)

    page.goto(f"{live_server.url}/admin/releases/releaseplan/{plan.pk}/step/14/")
    page.wait_for_load_state("networkidle")
    _measure(page, "step 14 with failed sites to roll back")
    assert page.locator("#step-rollback input[name=site]").count() == 2
    page.click("#step-rollback input[type=submit]")
    page.wait_for_selector("input[name=confirm_environment]")
    _measure(page, "the rollback confirmation")
    assert page.locator(".breadcrumbs").inner_text().endswith("Step 14 › Roll back")
    assert page.locator(".rp-rollback-sites li").count() >= 2
    assert "back to" in page.locator(".rp-rollback-sites").inner_text()
