"""Personal tokens: shown once, stored hashed, expiring, revocable, read-only; failed
authentication throttled and logged without the token."""

from __future__ import annotations

import io
import logging
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from api import tokens
from api.models import ApiToken, digest
from releases.models import AuditEvent
from tests.support import member

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_token_is_stored_hashed_and_acts_as_its_user(api):
    user = member("ops-lead", "release-manager")
    client = api(user, "laptop")
    row = ApiToken.objects.get(user=user, name="laptop")
    assert client.token.startswith("erp_") and row.hashed == digest(client.token)
    assert client.token not in str(ApiToken.objects.values_list().get())

    response = client.get("plans/")

    assert response.status_code == 200, response.text
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}
    row.refresh_from_db()
    assert row.last_used_at is not None


@pytest.mark.parametrize("why", ["revoked", "expired", "inactive user", "not staff", "unknown"])
def test_a_revoked_or_expired_token_is_refused(api, why, caplog):
    user = member("ops-lead", "release-manager")
    client = api(user)
    row = ApiToken.objects.get(user=user)
    if why == "revoked":
        tokens.revoke(row, user)
    elif why == "expired":
        ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif why == "inactive user":
        type(user).objects.filter(pk=user.pk).update(is_active=False)
    elif why == "not staff":
        type(user).objects.filter(pk=user.pk).update(is_staff=False)
    else:
        client.token = client.token[:-4] + "AAAA"

    with caplog.at_level(logging.INFO):
        response = client.get("plans/")

    assert response.status_code == 401
    assert response.json() == {"code": "invalid_token", "detail": "invalid, expired or revoked token"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API authentication from 127.0.0.1 failed" in caplog.text
    assert client.token not in caplog.text and client.token[4:20] not in caplog.text


def test_no_token_at_all_is_refused(api):
    client = api(member("ops-lead", "release-manager"))
    response = requests.get(client.base + "plans/", timeout=10)
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"


def test_failed_authentications_are_throttled_per_address(api, settings):
    client = api(member("ops-lead", "release-manager"))
    good = client.token
    client.token = "erp_wrong"
    answers = [client.get("plans/").status_code for _ in range(21)]
    assert answers[:20] == [401] * 20 and answers[20] == 429
    client.token = good
    throttled = client.get("plans/")
    # Even the right token is not looked at from an address that is guessing.
    assert throttled.status_code == 429 and throttled.json()["code"] == "throttled"


def test_a_read_only_token_reads_and_changes_nothing(api):
    from tests.support import R, member

    client = api(member("ops-lead", "release-manager"), read_only=True)
    assert client.get("plans/").status_code == 200
    response = client.post("plans/", {"version": "2.8.5", "release_commit": R})
    assert response.status_code == 403
    assert response.json()["code"] == "read_only_token"


def test_token_command_prints_the_token_once_and_revokes(transactional_db):
    user = member("ops-lead", "release-manager")
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "token", "create", "--user", "ops-lead", "--name", "ci", "--expires", "30d", stdout=out, stderr=err
    )
    token = out.getvalue().strip()
    row = ApiToken.objects.get(user=user, name="ci")
    assert token.startswith("erp_") and row.hashed == digest(token)
    assert timedelta(days=29) < row.expires_at - timezone.now() <= timedelta(days=30)
    assert token not in err.getvalue()

    listing = io.StringIO()
    call_command("token", "list", "--json", stdout=listing)
    assert token not in listing.getvalue() and '"state": "active"' in listing.getvalue()

    call_command("token", "revoke", "--user", "ops-lead", "--name", "ci", stdout=io.StringIO())
    row.refresh_from_db()
    assert row.revoked_at is not None
    actions = list(AuditEvent.objects.filter(action__startswith="token_").values_list("action", "channel"))
    assert actions == [("token_revoke", "shell"), ("token_create", "shell")]
    assert not AuditEvent.objects.filter(parameters__icontains=token[4:]).exists()


def test_token_names_are_unique_among_a_users_active_tokens(transactional_db):
    user = member("ops-lead", "release-manager")
    tokens.create(user, "ci")
    with pytest.raises(tokens.TokenRefused, match="already has a token named 'ci'"):
        tokens.create(user, "ci")
    tokens.revoke_named(user, "ci")
    tokens.create(user, "ci")  # the name is free again once revoked
    assert ApiToken.objects.filter(user=user, name="ci").count() == 2


def test_only_the_owner_or_a_superuser_revokes_a_token(transactional_db):
    owner, other = member("ops-lead", "release-manager"), member("other", "prod-manager")
    row, _ = tokens.create(owner, "ci")
    with pytest.raises(tokens.TokenRefused):
        tokens.revoke(row, other)
    admin = type(owner).objects.create_superuser("root", password="pw")
    tokens.revoke(row, admin)
    assert row.revoked_at is not None and row.revoked_by == "root"


def test_the_admin_shows_a_new_token_once_and_only_ones_own_tokens(client):
    user = member("ops-lead", "release-manager")
    tokens.create(member("someone-else", "release-manager"), "theirs")
    client.force_login(user)

    created = client.post("/admin/api/apitoken/add/", {"name": "laptop", "lifetime": "30", "read_only": "on"})

    assert created.status_code == 200, created.content[:2000]
    row = ApiToken.objects.get(user=user, name="laptop")
    secret = created.context["secret"]
    assert row.hashed == digest(secret) and row.read_only and secret in created.content.decode()
    assert "no-store" in created["Cache-Control"]
    listing = client.get("/admin/api/apitoken/").content.decode()
    assert "laptop" in listing and "theirs" not in listing and secret not in listing
    # Revoking from the list: the owner's own token.
    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert row.revoked_at is not None
