"""The admin's failed-login lockout keys on the client's address as the reverse proxy saw it.

Behind the TLS proxy of README's Deployment every request reaches the web process from the proxy's
address. With PORTAL_TRUSTED_PROXIES=N the address is the Nth X-Forwarded-For entry from the
right (the one the outermost proxy appended), so an attacker's wrong guesses lock a username out
for the attacker's address only, and a forged header cannot choose the address. With 0 (the
default) the header is ignored and the connection's address counts, as before.
"""

from __future__ import annotations

import pytest
from axes.helpers import get_client_ip_address
from axes.models import AccessAttempt
from django.test import Client, RequestFactory

from tests.support import make_user

LOGIN = "/admin/login/?next=/admin/"
PROXY = "10.0.0.2"  # the TLS proxy: REMOTE_ADDR of every request it forwards
ATTACKER = "203.0.113.66"  # A
ALICE = "198.51.100.7"  # B


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db):
    return make_user("alice")


def through_proxy(password: str, forwarded_for: str | None, client: Client | None = None):
    """A login as alice forwarded by the proxy, which appends the sender's address to the header."""
    extra = {"REMOTE_ADDR": PROXY}
    if forwarded_for is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return (client or Client()).post(LOGIN, {"username": "alice", "password": password}, **extra)


def guess_until_locked(settings, forwarded_for: str) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert through_proxy("wrong", forwarded_for).status_code == 200  # the form, with its error
    assert through_proxy("wrong", forwarded_for).status_code == 429  # the failure at the limit


def logs_in(forwarded_for: str) -> bool:
    client = Client()
    response = through_proxy("pw", forwarded_for, client)
    return response.status_code == 302 and "_auth_user_id" in client.session


def test_behind_one_proxy_guesses_from_one_address_do_not_lock_alice_out_at_another(alice, settings):
    settings.PORTAL_TRUSTED_PROXIES = 1

    guess_until_locked(settings, ATTACKER)

    assert through_proxy("pw", ATTACKER).status_code == 429  # locked where the guesses came from
    assert logs_in(ALICE)  # alice, through the same proxy, from her own address
    assert through_proxy("pw", ATTACKER).status_code == 429  # her success did not lift A's lockout
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_a_forged_forwarded_for_is_still_attributed_to_the_real_address(alice, settings):
    settings.PORTAL_TRUSTED_PROXIES = 1
    forged = f"{ALICE}, {ATTACKER}"  # the attacker sent "X-Forwarded-For: B"; the proxy appended A

    guess_until_locked(settings, forged)

    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}
    assert through_proxy("pw", ATTACKER).status_code == 429  # the attacker's own address is locked
    assert through_proxy("pw", forged).status_code == 429  # forging again does not get round it
    assert logs_in(ALICE)  # and alice's address was never charged


def test_without_trusted_proxies_the_connection_address_counts_as_before(alice, settings):
    settings.PORTAL_TRUSTED_PROXIES = 0

    guess_until_locked(settings, ATTACKER)

    # X-Forwarded-For is ignored: everyone behind the proxy shares its address, and its lockout.
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {PROXY}
    assert not logs_in(ALICE)
    direct = Client()
    response = direct.post(LOGIN, {"username": "alice", "password": "pw"}, REMOTE_ADDR=ALICE)
    assert response.status_code == 302 and "_auth_user_id" in direct.session


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "expected"),
    [
        (0, f"{ALICE}", PROXY),  # no trusted proxy: the header is ignored
        (1, None, PROXY),  # no header: the request did not come through the proxy
        (1, f"{ALICE}, {ATTACKER}", ATTACKER),
        (1, f" {ATTACKER} ", ATTACKER),
        (1, "2001:DB8::1", "2001:db8::1"),
        (2, f"{ALICE}, {ATTACKER}, 10.0.0.1", ATTACKER),  # two proxies: the second from the right
        (2, f"{ATTACKER}", PROXY),  # fewer entries than proxies: not through both of them
        (1, "not-an-address", PROXY),  # a malformed entry is never stored as the address
        (1, f"{ATTACKER}:5555", PROXY),
    ],
)
def test_the_address_axes_counts_against(settings, proxies, forwarded_for, expected):
    settings.PORTAL_TRUSTED_PROXIES = proxies
    extra = {"REMOTE_ADDR": PROXY}
    if forwarded_for is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded_for
    request = RequestFactory().post(LOGIN, **extra)

    assert get_client_ip_address(request) == expected
