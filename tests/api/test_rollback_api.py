"""Issue 20 §4 through the HTTP API: putting failed sites back (`POST …/steps/<n>/rollback/`),
and every protection of it tried by the person it is meant to stop, with their own token.

Judged from Atlas's side first (the simulator's request log and its event log: which sites were
PATCHed, onto which item, and whether the update onto it ran and the site then reported its
version cleanly and served its page), then from the API's answers, then the portal's rows and
audit. Step 14 runs on a small PROD (100 sites) as tests/test_rollback.py runs it: its first
update group (5 sites) with two sites that the release breaks, so they fail verification and the
step pauses with them failed.
"""

from __future__ import annotations

from collections import Counter

import pytest

from releases.models import AuditEvent, Environment, LaunchRequest, SiteResult, StepRun
from releases.states import RollbackState, SiteState, StepState
from tests.support import run_engine, sites, tasks_not_sent
from tests.test_rollback import failed_step_14
from tests.test_rollback import paused_at_the_threshold as paused_at_threshold
from tests.test_verification import (
    SITE_PATCH,
)

pytestmark = pytest.mark.django_db(transaction=True)

ROLLBACK = "plans/2.8.5/steps/14/rollback/"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# -- helpers ------------------------------------------------------------------------------------


def requests_since(prod, mark: int) -> list[list]:
    """[method, path, arrived, answered, status] of every request Atlas received after `mark`."""
    return list(prod.injector.requests)[mark:]


def site_patches_since(prod, mark: int) -> Counter:
    """How many PATCHes each site received after request number `mark`."""
    found = Counter()
    for method, path, *_ in requests_since(prod, mark):
        match = SITE_PATCH.match(path)
        if method == "PATCH" and match:
            found[match.group(1)] += 1
    return found


def writes_since(prod, mark: int) -> list[tuple[str, str]]:
    return [(method, path) for method, path, *_ in requests_since(prod, mark) if method in WRITES]


def events_since(prod, mark: int, kind: str) -> list[dict]:
    return [event for event in prod.events.snapshot()[mark:] if event["kind"] == kind]


def profile_of(prod, path: str) -> str:
    (site,) = [site for site in sites(prod) if site["path"] == path]
    return str(site["code"]["profile"])


def paused_at_the_threshold(simulator):
    """The rollback tests' step 14 paused at its threshold before batch 2 (`tests.test_rollback`).
    Returns (prod, step, broken paths, batch 2's paths)."""
    prod, step, _, broken, second = paused_at_threshold(simulator)
    return prod, step, broken, [path for path, _ in second]


def assert_refusal(response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "detail"}, body
    assert body["code"] == code, body
    for word in words:
        assert word in body["detail"], body


# -- the rollback itself ------------------------------------------------------------------------


def test_rollback_of_the_failed_sites_through_the_api_puts_exactly_them_back_and_verifies_them(
    api, simulator, prod_manager
):
    """A PROD release manager's token: the preview names the two failed sites, each with the
    version it goes back to, and asks for the version typed (the release item runs database
    updates); the POST answers 202 with the step's URL in `Location` and the body; the engine
    then PATCHes each failed site once, onto the item it was on before step 14, and no other
    site; Atlas runs the update onto that item, the site reports that version without an error
    and serves its page afterwards. Audited per site under the channel `api` and the token."""
    prod, step, _, broken, before = failed_step_14(simulator)
    rows = {row.path: row for row in SiteResult.objects.filter(step=step)}
    client = api(prod_manager, "ci")

    preview = client.get(ROLLBACK, failed="true")
    assert preview.status_code == 200, preview.text
    shown = preview.json()
    assert sorted(site["path"] for site in shown["sites"]) == sorted(broken)
    assert {site["path"]: site["to"] for site in shown["sites"]} == {path: before[path] for path in broken}
    assert all(site["version"] and site["version"] != "2.8.5" for site in shown["sites"]), shown
    assert (shown["protected"], shown["database"], shown["confirmation"]) == (True, True, "2.8.5")

    requests_mark, events_mark = len(prod.injector.requests), len(prod.events.snapshot())
    with tasks_not_sent() as sent:
        response = client.post(ROLLBACK, {"failed": True, "confirm": "2.8.5", "confirm_environment": "PROD"})
    assert response.status_code == 202, response.text
    document = response.json()
    assert sent.call_count == 1
    assert (
        document["url"].endswith("/api/v1/plans/2.8.5/steps/14/")
        and response.headers["Location"] == document["url"]
    )
    assert (document["action"], document["version"], document["step"]["number"]) == ("rollback", "2.8.5", 14)
    assert document["step"]["state"] == StepState.RUNNING and document["request"] is None
    assert not site_patches_since(prod, requests_mark), "the API sent something itself: the worker sends"

    assert run_engine(step) == StepState.PAUSED

    # Atlas's side: exactly the failed sites, once each, back onto their earlier item.
    assert site_patches_since(prod, requests_mark) == Counter({rows[path].site_id: 1 for path in broken})
    other_writes = [(m, p) for m, p in writes_since(prod, requests_mark) if not p.startswith("/drush/")]
    assert sorted(other_writes) == sorted(("PATCH", f"/sites/{rows[path].site_id}") for path in broken)
    updates = events_since(prod, events_mark, "site_update")
    assert sorted((event["id"], event["profile"], event["source"]) for event in updates) == sorted(
        (rows[path].site_id, before[path], "client") for path in broken
    )
    for path in broken:
        site_id = rows[path].site_id
        assert profile_of(prod, path) == before[path]
        (finished,) = [
            event for event in events_since(prod, events_mark, "update_finished") if event["id"] == site_id
        ]
        assert str(finished["profile"]) == before[path] and not finished["broken"], finished
        assert finished["version"] and finished["version"] != "2.8.5", finished
        reports = [
            event
            for event in events_since(prod, events_mark, "statistics_report")
            if event["id"] == site_id and event["at"] >= finished["at"]
        ]
        assert any(not report["error"] and report["version"] == finished["version"] for report in reports), (
            path
        )
        pages = [
            event
            for event in events_since(prod, events_mark, "page_get")
            if event["id"] == site_id and event["at"] >= finished["at"]
        ]
        assert any(page["status"] == 200 for page in pages), f"{path}: no page served after the rollback"
    for path in set(rows) - set(broken):
        assert profile_of(prod, path) != before[path], f"{path} was put back too"

    # The API's view of it, and the audit.
    polled = client.get("plans/2.8.5/steps/14/")
    assert polled.status_code == 200, polled.text
    status = polled.json()["step"]
    assert status["state"] == StepState.PAUSED, status
    assert (status["counts"]["rolled_back"], status["counts"]["failed"]) == (2, 2), status["counts"]
    for path in broken:
        row = SiteResult.objects.get(pk=rows[path].pk)
        assert (row.rollback, row.state) == (RollbackState.DONE, SiteState.FAILED), row.rollback_message
    audited = AuditEvent.objects.filter(action="rollback", step=step, outcome="ok")
    assert sorted(audited.values_list("parameters__path", flat=True)) == sorted(broken)
    assert set(audited.values_list("username", "channel", "channel_account")) == {
        ("prod-manager", "api", "ci")
    }


# -- refusals -----------------------------------------------------------------------------------


def test_a_viewer_a_dev_only_manager_and_bad_requests_are_refused_and_nothing_reaches_atlas(
    api, simulator, viewer, release_manager, prod_manager
):
    """Each refusal answers with `{code, detail}` and sends nothing to Atlas or the broker:
    a viewer (403), a release manager without PROD's permission (403, naming it), a PROD
    manager naming a site the step targeted but never changed (409), PROD's name missing or
    mistyped (409), and the version not typed for the database warning (409). Each is audited
    as refused under the channel `api`. Then the PROD manager's correct request is accepted:
    the refusals were of a rollback that could be done."""
    prod, step, broken, never_changed = paused_at_the_threshold(simulator)
    mark = len(prod.injector.requests)
    confirmed = {"failed": True, "confirm": "2.8.5", "confirm_environment": "PROD"}
    watcher, dev_only, manager = api(viewer, "watch"), api(release_manager, "dev"), api(prod_manager, "ci")

    with tasks_not_sent() as sent:
        as_viewer = watcher.post(ROLLBACK, confirmed)
        viewer_by_path = watcher.post(ROLLBACK, {**confirmed, "failed": False, "sites": [broken[0]]})
        as_dev_only = dev_only.post(ROLLBACK, confirmed)
        dev_only_preview = dev_only.get(ROLLBACK, failed="true")
        untouched = manager.post(
            ROLLBACK, {**confirmed, "failed": False, "sites": [never_changed[0], broken[0]]}
        )
        unnamed = manager.post(ROLLBACK, {"failed": True, "confirm": "2.8.5"})
        lowercase = manager.post(ROLLBACK, {**confirmed, "confirm_environment": "prod"})
        untyped = manager.post(ROLLBACK, {**confirmed, "confirm": "2.8"})
        assert sent.call_count == 0

    assert_refusal(as_viewer, 403, "permission_denied", "viewer may not roll back")
    assert_refusal(viewer_by_path, 403, "permission_denied", "viewer may not roll back")
    assert_refusal(
        as_dev_only,
        403,
        "permission_denied",
        "release-manager may not roll back sites on the protected environment PROD",
    )
    assert_refusal(dev_only_preview, 403, "permission_denied", "protected environment PROD")
    assert_refusal(untouched, 409, "rollback_refused", f"{never_changed[0]} (the step never changed it)")
    assert_refusal(unnamed, 409, "confirmation_refused", "PROD is protected", "nothing was rolled back")
    assert_refusal(lowercase, 409, "confirmation_refused", "got 'prod'")
    assert_refusal(untyped, 409, "rollback_refused", "type 2.8.5 to confirm")

    assert writes_since(prod, mark) == [], "a refused rollback wrote to Atlas"
    step.refresh_from_db()
    assert step.state == StepState.PAUSED and "rollback" not in (step.result or {})
    assert not SiteResult.objects.filter(step=step).exclude(rollback="").exists()
    refused = AuditEvent.objects.filter(action="rollback", outcome="refused")
    assert not AuditEvent.objects.filter(action="rollback", outcome="ok").exists()
    assert set(refused.values_list("channel", flat=True)) == {"api"}
    assert Counter(refused.values_list("username", flat=True)) == Counter(
        {"viewer": 2, "release-manager": 2, "prod-manager": 4}
    )

    with tasks_not_sent() as sent:
        accepted = manager.post(ROLLBACK, confirmed)
    assert accepted.status_code == 202 and sent.call_count == 1, accepted.text
    assert run_engine(step) == StepState.PAUSED
    rows = SiteResult.objects.filter(step=step, path__in=broken)
    assert site_patches_since(prod, mark) == Counter({row.site_id: 1 for row in rows})


def test_a_viewer_is_refused_for_permission_whatever_they_typed(api, simulator, viewer, release_manager):
    """The person the protection is meant to stop is told they may not, not asked to type PROD."""
    prod, step, _, broken, _ = failed_step_14(simulator)
    mark = len(prod.injector.requests)

    with tasks_not_sent() as sent:
        as_viewer = api(viewer, "watch").post(ROLLBACK, {"failed": True, "confirm": "2.8.5"})
        as_dev_only = api(release_manager, "dev").post(ROLLBACK, {"failed": True, "confirm": "2.8.5"})
    assert sent.call_count == 0 and writes_since(prod, mark) == []

    assert_refusal(as_viewer, 403, "permission_denied", "viewer may not roll back")
    assert_refusal(as_dev_only, 403, "permission_denied", "protected environment PROD")


# -- two people ---------------------------------------------------------------------------------


def test_on_a_two_person_environment_the_api_rollback_is_a_request_its_requester_cannot_approve(
    api, simulator, prod_manager, prod_approver
):
    """PROD needs two people: the PROD manager's rollback answers 202 with a pending request and
    sends nothing; their own second token's approval is 403 `own_request` and sends nothing; the
    other PROD manager's approval starts it, and Atlas then receives one PATCH per failed site."""
    prod, step, _, broken, before = failed_step_14(simulator)
    Environment.objects.filter(name="PROD").update(two_person=True)
    requester, laptop = api(prod_manager, "ci"), api(prod_manager, "laptop")
    approver = api(prod_approver, "desk")
    mark = len(prod.injector.requests)
    body = {"failed": True, "confirm": "2.8.5", "confirm_environment": "PROD"}

    with tasks_not_sent() as sent:
        asked = requester.post(ROLLBACK, body)
        assert asked.status_code == 202, asked.text
        request = asked.json()["request"]
        assert (request["action"], request["state"], request["requested_by"]) == (
            LaunchRequest.Action.ROLLBACK,
            "pending",
            "prod-manager",
        )
        assert asked.json()["step"]["state"] == StepState.PAUSED

        own = laptop.post("plans/2.8.5/approve/", {"step": 14, "request": request["id"]})
        assert_refusal(own, 403, "own_request")
        assert sent.call_count == 0
        assert writes_since(prod, mark) == [], "the request or its refused approval wrote to Atlas"
        assert StepRun.objects.get(pk=step.pk).state == StepState.PAUSED
        assert LaunchRequest.objects.get(pk=request["id"]).state == "pending"

        approved = approver.post("plans/2.8.5/approve/", {"step": 14, "request": request["id"]})
        assert approved.status_code == 202, approved.text
        assert sent.call_count == 1

    assert run_engine(step) == StepState.PAUSED
    rows = {row.path: row for row in SiteResult.objects.filter(step=step, path__in=broken)}
    assert site_patches_since(prod, mark) == Counter({row.site_id: 1 for row in rows.values()})
    for path, row in rows.items():
        assert profile_of(prod, path) == before[path] and row.rollback == RollbackState.DONE
    decisions = AuditEvent.objects.filter(action="approve").order_by("id")
    assert list(decisions.values_list("outcome", "username", "channel_account")) == [
        ("refused", "prod-manager", "laptop"),
        ("ok", "prod-approver", "desk"),
    ]
