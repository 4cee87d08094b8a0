"""Every role's allowed and refused operations through the API are the admin's: the table is
tests/admin/test_operations_permissions.py's POLICY, each row put into the same state, POSTed through the
API with the role's own token, and judged from the database the same way. A refused row is a 403
`permission_denied` that changed nothing and left a refusal in the audit trail; an allowed one
was carried out; both recorded with the channel `api` and the token's name."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from releases import services
from releases.models import AuditEvent
from tests.admin import test_operations_permissions as admin_table
from tests.support import R, T, member

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def lead():
    call_command("loadrunbook", verbosity=0)
    return member("prod-lead", "prod-manager")


@pytest.fixture
def plan(lead):
    return services.create_plan("2.8.5", commit=R, user=lead)


def post(client, plan, step, control: str, env: str | None):
    n, base = step.number, f"plans/{plan.version}/"
    if control == "launch":
        return client.post(base + "launch/", {"step": n, "yes": True, "confirm_environment": env or ""})
    if control in ("pause", "resume", "abort"):
        return client.post(base + f"{control}/")
    if control == "skip":
        return client.post(base + f"steps/{n}/skip/", {"reason": admin_table.REASON})
    if control == "finalize":
        return client.post(base + "finalize/", {"tag": "2.8.5", "commit": T})
    if control in ("approve", "withdraw"):
        return client.post(base + f"{control}/", {"step": n, "request": step.launch_requests.get().pk})
    return client.post(base + f"steps/{n}/retry-failed/")


@pytest.mark.parametrize(("role", "control", "env"), list(admin_table._rows()))
def test_every_operation_through_the_api_follows_the_admins_policy(
    api, lead, plan, sent_tasks, role, control, env
):
    user = member(role, role)
    client = api(user, "ci")
    step = admin_table.prepare(plan, lead, control, env)
    before = admin_table.snapshot(plan)

    response = post(client, plan, step, control, env)

    events = AuditEvent.objects.filter(username=role).exclude(action__startswith="token_")
    if admin_table.allowed(role, control, env):
        assert response.status_code in (200, 202), response.text
        admin_table.assert_carried_out(control, plan, step, sent_tasks)
        ok = events.get(action=admin_table.OK_ACTION[control], outcome="ok")
        assert (ok.channel, ok.channel_account) == ("api", "ci")
        assert not events.filter(outcome="refused").exists()
    else:
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "permission_denied", response.json()
        assert admin_table.snapshot(plan) == before, f"{role} changed something with {control}"
        assert sent_tasks.call_count == 0
        assert not events.filter(outcome="ok").exists()
        refused = events.filter(outcome="refused")
        assert set(refused.values_list("action", flat=True)) & admin_table.REFUSED_ACTIONS[control]
        assert set(refused.values_list("channel", "channel_account")) == {("api", "ci")}


@pytest.mark.parametrize("role", list(admin_table.ROLES))
def test_reading_needs_the_view_permission_every_role_has(api, plan, role):
    client = api(member(role, role))
    for path in (
        "plans/",
        f"plans/{plan.version}/",
        f"plans/{plan.version}/steps/4/",
        "environments/",
        "audit/",
    ):
        assert client.get(path).status_code == 200, path
