"""The Atlas client against a simulated Atlas over real HTTP on loopback.

What Atlas did behind the API (which sites got a `site_update`, which items were deployed) is
read from the simulator's event log; what the client sent is read from a response hook on its
session, so nothing in `requests` is mocked.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from bson import ObjectId

from atlas.client import AtlasClient
from atlas.errors import (
    AuthenticationError,
    Cancelled,
    Conflict,
    InvalidSelector,
    NotFound,
    OutcomeUnknown,
    PossiblyDestroyed,
    Unavailable,
    ValidationFailed,
)
from atlas.selectors import exclude_profile
from atlas.simulator import SimulatorServer
from atlas.types import CodeItem, Site

USERNAME = "release-portal"
PASSWORD = "Zq7-sim-password-9f3"
LAUNCHED_MESSAGE = "Instance is launched or launching. To delete, take instance down first."

# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimulatorServer]]:
    started: list[SimulatorServer] = []

    def start(environment: str, **kwargs) -> SimulatorServer:
        server = SimulatorServer(environment, password=PASSWORD, pool_refill_delay=0, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        # stop() waits out the server's 0.5 s poll interval; no later test needs this server.
        threading.Thread(target=server.stop, daemon=True).start()


@pytest.fixture
def sim(start_sim: Callable[..., SimulatorServer]) -> SimulatorServer:
    """A small TEST Atlas: launched, installed, available, locked and down sites on two profiles."""
    return start_sim("test", sites=200, seed=7)


def make_client(sim: SimulatorServer, **overrides) -> AtlasClient:
    options = dict(
        username=USERNAME,
        password=PASSWORD,
        environment="TEST",
        backoff=0.01,
        backoff_cap=0.05,
        read_timeout=5,
        max_attempts=5,
    )
    options.update(overrides)
    return AtlasClient(options.pop("base_url", sim.url), **options)


@pytest.fixture
def client(sim: SimulatorServer) -> Iterator[AtlasClient]:
    atlas = make_client(sim)
    yield atlas
    atlas.close()


def record_requests(client: AtlasClient) -> list[requests.PreparedRequest]:
    """Every request the client got an answer to, in order (timeouts have no answer)."""
    answered: list[requests.PreparedRequest] = []
    client.session.hooks["response"].append(
        lambda response, *args, **kwargs: answered.append(response.request)
    )
    return answered


def statuses_seen(client: AtlasClient) -> list[int]:
    seen: list[int] = []
    client.session.hooks["response"].append(
        lambda response, *args, **kwargs: seen.append(response.status_code)
    )
    return seen


def docs(sim: SimulatorServer, resource: str, query: dict | None = None) -> list[dict]:
    with sim.lock:
        return list(sim.db[resource].find({"_deleted": {"$ne": True}, **(query or {})}))


def doc(sim: SimulatorServer, resource: str, item_id: str) -> dict:
    with sim.lock:
        return sim.db[resource].find_one({"_id": ObjectId(item_id)})


def profile_id(sim: SimulatorServer, version: str) -> str:
    (item,) = docs(sim, "code", {"meta.name": "express", "meta.version": version})
    return str(item["_id"])


CURRENT, PREVIOUS = "2.8.4", "2.8.3"  # the seeded express profiles


def a_site(sim: SimulatorServer, status: str, index: int = 0) -> Site:
    current = ObjectId(profile_id(sim, CURRENT))
    found = sorted(docs(sim, "sites", {"status": status, "code.profile": current}), key=lambda d: d["_id"])
    return Site.from_document(found[index])


def client_updates(sim: SimulatorServer, site_id: str) -> list[dict]:
    """The site_update tasks a client PATCH (not a code cascade) queued for the site."""
    return [
        event
        for event in sim.events.of_kind("site_update")
        if event["id"] == site_id and event["source"] == "client"
    ]


def events_for(sim: SimulatorServer, kind: str, item_id: str) -> list[dict]:
    return [event for event in sim.events.of_kind(kind) if event["id"] == item_id]


def patch_as_another_writer(sim: SimulatorServer, site_id: str, changes: dict) -> None:
    """Change a site behind the client's back, as an operator or an Atlas task would."""
    etag = requests.get(f"{sim.url}sites/{site_id}", timeout=10).json()["_etag"]
    response = requests.patch(
        f"{sim.url}sites/{site_id}",
        json=changes,
        headers={"If-Match": etag},
        auth=(USERNAME, PASSWORD),
        timeout=10,
    )
    response.raise_for_status()


@contextmanager
def slow_answers_until(
    sim: SimulatorServer, applied: Callable[[], bool], slow_ms: float = 1500
) -> Iterator[None]:
    """Hold back every answer by `slow_ms` until `applied()`; then switch the faults off.

    The simulator holds the answer *after* applying the write, so the client times out on a
    write that landed. Faults apply to GETs too, so they are cleared as soon as the write is
    applied, letting the client's re-read through.
    """
    sim.set_faults(slow_ms=slow_ms, slow_rate=1.0)
    stop = threading.Event()

    def clear_once_applied() -> None:
        while not stop.is_set():
            if applied():
                sim.set_faults()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=clear_once_applied, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        sim.set_faults()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def code_payload(commit_hash: str, version: str = "2.9.0", is_current: bool = False) -> dict:
    return {
        "git_url": "git@github.com:CuBoulder/express.git",
        "commit_hash": commit_hash,
        "meta": {"name": "express", "version": version, "code_type": "profile", "is_current": is_current},
        "deploy": {"registry_rebuild": False, "cache_clear": True, "update_database": True},
    }


NEW_COMMIT = "c0ffee" + "1" * 34


# -- listing ------------------------------------------------------------------------------------


def test_list_sites_follows_every_page_of_2000(start_sim: Callable[..., SimulatorServer]) -> None:
    # 4,500 sites make three pages, the last one partial. 10,000 behave the same but cost ~13 s
    # (seeding ~5 s, five mongomock-sorted pages ~8 s), a third of this file's time budget.
    prod = start_sim("prod", sites=4_500)
    expected = len(docs(prod, "sites"))
    client = make_client(prod, environment="PROD", read_timeout=30)
    before = client.requests_sent

    sites = client.list_sites({})

    assert expected >= 4_500
    assert client.requests_sent - before == math.ceil(expected / 2000)
    assert len({site.id for site in sites}) == len(sites) == expected


def test_list_sites_pages_by_id_so_sites_changing_between_pages_are_neither_skipped_nor_repeated(
    start_sim: Callable[..., SimulatorServer],
) -> None:
    prod = start_sim("prod", sites=4_500)
    where = {"status": {"$in": ["installed", "launched", "available"]}}
    expected = {str(d["_id"]) for d in docs(prod, "sites", where)}
    client = make_client(prod, environment="PROD", read_timeout=30)
    client.page_size = 500
    first_page_ids: list[str] = []

    def churn_after_first_page(response, *args, **kwargs):
        if not first_page_ids and response.request.method == "GET":
            first_page_ids.extend(item["_id"] for item in response.json()["_items"])
            # Another writer takes sites out of the selection: with page offsets, every later
            # page would shift and sites would be skipped.
            with prod.lock:
                early = list(
                    prod.db["sites"].find({"_id": {"$in": [ObjectId(i) for i in first_page_ids[:200]]}})
                )
            for site in early:
                patch_as_another_writer(prod, str(site["_id"]), {"status": "down"})

    client.session.hooks["response"].append(churn_after_first_page)
    sent = record_requests(client)

    sites = client.list_sites(where)

    ids = [s.id for s in sites]
    assert len(ids) == len(set(ids)), "a site was listed twice"
    assert set(ids) == expected, f"{len(expected - set(ids))} sites were skipped"
    wheres = [json.loads(parse_qs(urlsplit(r.url).query)["where"][0]) for r in sent]
    assert all("page" not in parse_qs(urlsplit(r.url).query) for r in sent)
    assert wheres[1] == {**where, "_id": {"$gt": ids[499]}}


def test_list_sites_sends_where_as_json_sorted_by_id_in_pages_of_2000(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    sent = record_requests(client)

    sites = client.list_sites({"status": "installed"})

    (request,) = sent
    query = parse_qs(urlsplit(request.url).query)
    assert json.loads(query["where"][0]) == {"status": "installed"}
    assert query["sort"] == ["_id"]
    assert query["max_results"] == ["2000"]
    assert len(sites) == len(docs(sim, "sites", {"status": "installed"})) > 0
    assert {site.status for site in sites} == {"installed"}
    assert [site.id for site in sites] == sorted(site.id for site in sites)


def test_the_where_sent_keeps_the_selectors_order_with_the_portals_terms_last(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    # A scanning store tests the terms in the order sent: the operator's (selective) terms go
    # first, the profile exclusion and the page key the portal adds go last.
    sent = record_requests(client)
    where = exclude_profile({"update_group": 0, "status": "installed"}, "5c1ba4c1f4c8f16e08b8b9aa")

    list(client.iter_pages("sites", where))

    (request,) = sent
    text = parse_qs(urlsplit(request.url).query)["where"][0]
    assert list(json.loads(text)) == ["update_group", "status", "code.profile"], text


def test_list_sites_projection_returns_typed_sites(sim: SimulatorServer, client: AtlasClient) -> None:
    (stored,) = docs(sim, "sites", {"path": "homepage"})

    (site,) = client.list_sites({"path": "homepage"})

    assert isinstance(site, Site)
    assert (site.id, site.sid, site.path, site.status, site.update_group) == (
        str(stored["_id"]),
        stored["sid"],
        "homepage",
        "launched",
        6,
    )
    assert site.profile == str(stored["code"]["profile"])
    assert site.etag == stored["_etag"]


def test_list_code_returns_typed_code_items(sim: SimulatorServer, client: AtlasClient) -> None:
    (item,) = client.find_code("express", CURRENT, "profile")

    assert isinstance(item, CodeItem)
    assert item.id == profile_id(sim, CURRENT)
    assert (item.is_current, item.code_type) == (True, "profile")


def test_list_sites_refuses_where_operator_before_any_request(client: AtlasClient) -> None:
    before = client.requests_sent

    with pytest.raises(InvalidSelector, match=r"\$where"):
        client.list_sites({"$where": "this.status == 'launched'"})

    assert client.requests_sent == before


# -- site profile writes --------------------------------------------------------------------------


def test_update_site_profile_sends_if_match_from_the_body_etag(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "installed")
    sent = record_requests(client)

    result = client.update_site_profile(site.id, profile_id(sim, PREVIOUS), etag=site.etag)

    (patch,) = [request for request in sent if request.method == "PATCH"]
    assert patch.headers["If-Match"] == site.etag
    assert (result.status, result.attempts, result.already) == (200, 1, False)
    assert str(doc(sim, "sites", site.id)["code"]["profile"]) == profile_id(sim, PREVIOUS)
    assert len(client_updates(sim, site.id)) == 1


def test_update_site_profile_with_stale_etag_rereads_and_retries(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "installed")
    assert sim.touch_site(site.id)

    result = client.update_site_profile(site.id, profile_id(sim, PREVIOUS), etag=site.etag)

    assert (result.attempts, result.already) == (2, False)
    assert str(doc(sim, "sites", site.id)["code"]["profile"]) == profile_id(sim, PREVIOUS)
    assert len(client_updates(sim, site.id)) == 1


def test_update_site_profile_already_on_profile_after_412_is_not_patched_again(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "installed")
    client.update_site_profile(site.id, profile_id(sim, PREVIOUS), etag=site.etag)

    # A rerun from the same snapshot: its ETag is stale and the site is already done.
    result = client.update_site_profile(site.id, profile_id(sim, PREVIOUS), etag=site.etag)

    assert result.already is True
    assert len(client_updates(sim, site.id)) == 1


def test_update_site_profile_unanswered_patch_is_reread_not_resent(sim: SimulatorServer) -> None:
    site = a_site(sim, "installed")
    client = make_client(sim, read_timeout=0.5)
    answered = record_requests(client)

    with slow_answers_until(sim, lambda: bool(client_updates(sim, site.id))):
        result = client.update_site_profile(site.id, profile_id(sim, PREVIOUS), etag=site.etag)

    assert "PATCH" not in [request.method for request in answered]  # only the unanswered one
    assert result.already is True
    assert str(doc(sim, "sites", site.id)["code"]["profile"]) == profile_id(sim, PREVIOUS)
    assert len(client_updates(sim, site.id)) == 1


def test_update_site_profile_succeeds_through_503s_without_applying_twice(
    sim: SimulatorServer,
) -> None:
    client = make_client(sim, max_attempts=6)
    answers = statuses_seen(client)
    sites = [a_site(sim, "installed", index) for index in range(20)]
    sim.set_faults(fail_rate=0.3)

    results = [client.update_site_profile(s.id, profile_id(sim, PREVIOUS), etag=s.etag) for s in sites]

    assert 503 in answers  # the faults did hit this run
    assert [(result.status, result.already) for result in results] == [(200, False)] * len(sites)
    for site in sites:
        assert str(doc(sim, "sites", site.id)["code"]["profile"]) == profile_id(sim, PREVIOUS)
        assert len(client_updates(sim, site.id)) == 1


def test_persistent_503_raises_retryable_unavailable_naming_environment_and_url(
    sim: SimulatorServer,
) -> None:
    site = a_site(sim, "installed")
    client = make_client(sim, max_attempts=2)
    sim.set_faults(fail_rate=1.0)

    with pytest.raises(Unavailable) as raised:
        client.update_site_profile(site.id, profile_id(sim, PREVIOUS), etag=site.etag)

    assert raised.value.retryable is True
    assert "Atlas TEST" in str(raised.value)
    assert f"{sim.url}sites/{site.id}" in str(raised.value)
    assert client_updates(sim, site.id) == []


def test_update_of_unknown_site_raises_not_found(sim: SimulatorServer, client: AtlasClient) -> None:
    with pytest.raises(NotFound) as raised:
        client.update_site_profile(str(ObjectId()), profile_id(sim, PREVIOUS), etag="x")

    assert raised.value.status == 404
    assert raised.value.retryable is False


# -- deleting available sites ---------------------------------------------------------------------


def test_delete_available_site_reads_the_site_then_deletes_it_with_the_fresh_etag(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "available")
    sim.touch_site(site.id)  # whatever ETag a snapshot held is stale now
    fresh = doc(sim, "sites", site.id)["_etag"]
    sent = record_requests(client)

    result = client.delete_available_site(site.id)

    assert [(r.method, r.headers.get("If-Match")) for r in sent] == [("GET", None), ("DELETE", fresh)]
    assert (result.outcome, result.status, result.attempts, result.after_conflict) == (
        "deleted",
        204,
        1,
        False,
    )
    assert doc(sim, "sites", site.id)["_deleted"] is True
    (removal,) = events_for(sim, "site_remove", site.id)
    assert removal["status"] == "available"


def test_delete_of_a_site_taken_from_the_pool_since_the_snapshot_sends_no_delete(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "available")
    assert sim.state.take_pool_site(site.id) == site.id  # an install took it: now `installed`
    sent = record_requests(client)

    result = client.delete_available_site(site.id)

    assert (result.outcome, result.site_status, result.attempts) == ("left_pool", "installed", 0)
    assert [r.method for r in sent] == ["GET"]
    assert events_for(sim, "site_remove", site.id) == [], "Atlas destroyed a live site"
    assert doc(sim, "sites", site.id)["_deleted"] is False


def test_a_412_on_a_site_taken_meanwhile_reports_the_instance_possibly_destroyed(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "available")
    sim.set_faults(take_before_delete_rate=1.0)  # the install lands between our GET and DELETE

    with pytest.raises(
        PossiblyDestroyed, match="possibly destroyed while the site was 'installed'"
    ) as raised:
        client.delete_available_site(site.id)

    assert raised.value.status == 412
    (removal,) = events_for(sim, "site_remove", site.id)
    assert removal["status"] == "installed", "Atlas queues the removal before its ETag check (§3.4)"
    assert doc(sim, "sites", site.id)["_deleted"] is False


def test_a_412_on_a_site_still_available_finishes_the_deletion_and_says_so(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "available")
    touched = []

    def touch_after_first_read(response, *args, **kwargs):
        if response.request.method == "GET" and not touched:
            touched.append(sim.touch_site(site.id))  # another writer, between our GET and DELETE

    client.session.hooks["response"].append(touch_after_first_read)
    sent = record_requests(client)

    result = client.delete_available_site(site.id)

    assert [r.method for r in sent] == ["GET", "DELETE", "GET", "DELETE"]
    assert (result.outcome, result.attempts, result.after_conflict) == ("deleted", 2, True)
    assert doc(sim, "sites", site.id)["_deleted"] is True


def test_delete_of_site_launched_meanwhile_is_not_sent(sim: SimulatorServer, client: AtlasClient) -> None:
    site = a_site(sim, "available")
    patch_as_another_writer(sim, site.id, {"status": "launching"})  # Atlas's task makes it launched

    result = client.delete_available_site(site.id)

    assert (result.outcome, result.site_status) == ("left_pool", "launched")
    stored = doc(sim, "sites", site.id)
    assert (stored["status"], stored["_deleted"]) == ("launched", False)
    assert events_for(sim, "site_remove", site.id) == []


def test_a_delete_answered_503_then_found_taken_is_reported_possibly_destroyed(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "available")

    def race(response, *args, **kwargs):
        if response.request.method == "GET" and response.status_code == 200:
            sim.set_faults(fail_next=1)  # the DELETE answers 503: did it reach Atlas?
        elif response.request.method == "DELETE":
            sim.set_faults()
            sim.state.take_pool_site(site.id)  # and meanwhile an install took the site

    client.session.hooks["response"].append(race)

    with pytest.raises(PossiblyDestroyed, match="'installed'"):
        client.delete_available_site(site.id)


def test_delete_of_an_already_deleted_site_sends_nothing(sim: SimulatorServer, client: AtlasClient) -> None:
    site = a_site(sim, "available")
    client.delete_available_site(site.id)
    sent = record_requests(client)

    result = client.delete_available_site(site.id)

    assert result.outcome == "already_deleted"
    assert [r.method for r in sent] == ["GET"]
    assert len(events_for(sim, "site_remove", site.id)) == 1


# -- code items -----------------------------------------------------------------------------------


def test_create_code_posts_a_new_item(sim: SimulatorServer, client: AtlasClient) -> None:
    result = client.create_code(code_payload(NEW_COMMIT))

    assert (result.status, result.attempts, result.already) == (201, 1, False)
    stored = doc(sim, "code", result.id)
    assert (stored["commit_hash"], stored["meta"]["version"]) == (NEW_COMMIT, "2.9.0")
    assert result.etag == stored["_etag"]


def test_create_code_duplicate_name_and_version_raises_atlas_conflict(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    with pytest.raises(Conflict) as raised:
        client.create_code(code_payload(NEW_COMMIT, version=CURRENT))

    assert raised.value.message == f"Error: A profile named express-{CURRENT} already exists."
    assert docs(sim, "code", {"commit_hash": NEW_COMMIT}) == []


def test_create_code_duplicate_commit_hash_raises_validation_failed(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    taken = docs(sim, "code", {"meta.version": CURRENT})[0]["commit_hash"]

    with pytest.raises(ValidationFailed) as raised:
        client.create_code(code_payload(taken))

    assert "commit_hash" in raised.value.issues
    assert "commit_hash" in str(raised.value)
    assert docs(sim, "code", {"meta.version": "2.9.0"}) == []


def test_create_code_unanswered_post_is_found_by_commit_not_duplicated(sim: SimulatorServer) -> None:
    client = make_client(sim, code_write_timeout=0.5)
    answered = record_requests(client)

    with slow_answers_until(sim, lambda: bool(sim.events.of_kind("code_deploy"))):
        result = client.create_code(code_payload(NEW_COMMIT))

    assert "POST" not in [request.method for request in answered]  # only the unanswered one
    (stored,) = docs(sim, "code", {"commit_hash": NEW_COMMIT})
    assert result.already is True
    assert result.id == str(stored["_id"])
    assert len(sim.events.of_kind("code_deploy")) == 1


def test_patch_code_refuses_meta_with_commit_hash(sim: SimulatorServer, client: AtlasClient) -> None:
    before = client.requests_sent

    with pytest.raises(ValueError, match="never combine meta"):
        client.patch_code(
            profile_id(sim, PREVIOUS), {"commit_hash": NEW_COMMIT, "meta": {"is_current": True}}, etag="x"
        )

    assert client.requests_sent == before


def test_patch_code_refuses_dotted_meta_keys_with_commit_hash(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    before = client.requests_sent
    with pytest.raises(ValueError, match="never combine meta"):
        client.patch_code(
            profile_id(sim, CURRENT), {"commit_hash": NEW_COMMIT, "meta.is_current": True}, etag="x"
        )
    assert client.requests_sent == before


def test_patch_code_commit_hash_cascades_to_the_sites_on_it(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    previous = profile_id(sim, PREVIOUS)
    on_previous = {str(site["_id"]) for site in docs(sim, "sites", {"code.profile": ObjectId(previous)})}
    assert on_previous  # the seeded "down" sites

    result = client.patch_code(
        previous, {"commit_hash": NEW_COMMIT}, etag=doc(sim, "code", previous)["_etag"]
    )

    assert (result.status, result.attempts) == (200, 1)
    assert {event["id"] for event in sim.events.of_kind("cascade")} == on_previous
    assert doc(sim, "code", previous)["commit_hash"] == NEW_COMMIT


@pytest.mark.parametrize("status", [502, 504])
def test_a_commit_patch_a_gateway_gave_up_on_is_never_sent_again(
    sim: SimulatorServer, client: AtlasClient, status: int
) -> None:
    previous = profile_id(sim, PREVIOUS)
    sent = record_requests(client)
    sim.set_faults(fail_next=1, fail_status=status)  # Atlas may still be running the first one

    with pytest.raises(OutcomeUnknown, match="not sent again"):
        client.patch_code(previous, {"commit_hash": NEW_COMMIT}, etag=doc(sim, "code", previous)["_etag"])

    assert [r.method for r in sent].count("PATCH") == 1
    assert sim.events.of_kind("cascade") == []  # (the fault answered before Atlas saw it)


def test_a_commit_patch_refused_at_the_door_is_reread_then_sent_again_once(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    previous = profile_id(sim, PREVIOUS)
    on_previous = {str(site["_id"]) for site in docs(sim, "sites", {"code.profile": ObjectId(previous)})}
    sim.set_faults(fail_next=1)  # 503: the proxy refused it, Atlas never saw it

    result = client.patch_code(
        previous, {"commit_hash": NEW_COMMIT}, etag=doc(sim, "code", previous)["_etag"]
    )

    assert result.attempts == 2
    cascaded = [event["id"] for event in sim.events.of_kind("cascade")]
    assert sorted(cascaded) == sorted(on_previous), "the cascade ran other than once per site"


def test_a_write_is_not_sent_once_the_caller_stops(sim: SimulatorServer, client: AtlasClient) -> None:
    site = a_site(sim, "installed")
    client.proceed = lambda: False
    before = client.requests_sent

    with pytest.raises(Cancelled):
        client.update_site_profile(site.id, profile_id(sim, PREVIOUS), etag=site.etag)
    with pytest.raises(Cancelled):
        client.delete_available_site(a_site(sim, "available").id)  # its GET is sent, not the DELETE

    assert client.requests_sent == before + 1
    assert sim.events.of_kind("site_update") == [] and sim.events.of_kind("site_remove") == []


def _one_shot_server(behaviour: str) -> tuple[socket.socket, threading.Thread]:
    """A socket that reads one request, then answers garbage or resets the connection."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        if behaviour == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short")
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("behaviour", ["reset", "truncated"])
def test_a_write_that_reached_the_server_but_got_no_usable_answer_is_of_unknown_outcome(
    behaviour: str,
) -> None:
    server, thread = _one_shot_server(behaviour)
    port = server.getsockname()[1]
    client = AtlasClient(f"http://127.0.0.1:{port}/", username="u", password="p", max_attempts=1)
    try:
        with pytest.raises(OutcomeUnknown, match="may or may not have been applied"):
            client._send("DELETE", "sites/" + "a" * 24, etag="x", timeout=client.timeout)
    finally:
        thread.join(timeout=5)
        server.close()
        client.close()


def test_a_write_whose_connection_was_refused_is_known_unsent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed again below: nothing listens there
    client = AtlasClient(f"http://127.0.0.1:{port}/", username="u", password="p", max_attempts=1)
    with pytest.raises(Unavailable, match="could not connect") as caught:
        client._send("DELETE", "sites/" + "a" * 24, etag="x", timeout=client.timeout)
    assert not isinstance(caught.value, OutcomeUnknown)


def test_patch_code_is_current_demotes_the_other_current_item(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    previous, current = profile_id(sim, PREVIOUS), profile_id(sim, CURRENT)

    client.patch_code(previous, {"meta": {"is_current": True}}, etag=doc(sim, "code", previous)["_etag"])

    assert doc(sim, "code", previous)["meta"]["is_current"] is True
    assert doc(sim, "code", current)["meta"]["is_current"] is False
    assert [event["id"] for event in sim.events.of_kind("demote")] == [current]


# -- credentials and connectivity -----------------------------------------------------------------


def test_check_credentials_accepts_good_credentials_without_writing(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    answers = statuses_seen(client)

    assert client.check_credentials() is None

    assert answers in ([404], [412])
    assert len(sim.events) == 0


def test_a_403_is_an_authentication_error_too(sim: SimulatorServer) -> None:
    client = make_client(sim)

    def forbidden(response, *args, **kwargs):
        response.status_code = 403  # what an Apache/LDAP front answers for a locked account

    client.session.hooks["response"].append(forbidden)
    with pytest.raises(AuthenticationError):
        client.check_credentials()


def test_check_credentials_wrong_password_raises_authentication_error_without_the_password(
    sim: SimulatorServer,
) -> None:
    client = make_client(sim, password="wrong-Pw-7731")

    with pytest.raises(AuthenticationError) as raised:
        client.check_credentials()

    assert raised.value.status == 401
    assert "wrong-Pw-7731" not in f"{raised.value} {raised.value!r} {raised.value.body}"


def test_only_atlas_answering_a_write_past_authentication_counts_as_accepting_the_credentials(
    sim: SimulatorServer,
) -> None:
    """`credentials_accepted` opens an update step's window (releases/engine/credentials.py)."""
    site = a_site(sim, "launched")
    refused = make_client(sim, password="wrong-Pw-7731")
    with pytest.raises(AuthenticationError):
        refused.update_site_profile(site.id, site.profile, etag=site.etag)
    assert not refused.credentials_accepted

    client = make_client(sim, max_attempts=1)
    client.list_sites({"status": "launched"})  # GETs are public: they prove nothing
    assert client.get_site(site.id) is not None and not client.credentials_accepted
    sim.set_faults(fail_next=1, fail_methods=("PATCH",))  # the proxy in front answers 503
    with pytest.raises(Unavailable):
        client.update_site_profile(site.id, site.profile, etag=site.etag)
    assert not client.credentials_accepted

    client.update_site_profile(site.id, site.profile, etag=site.etag)  # Atlas answers 200

    assert client.credentials_accepted
    probed = make_client(sim)
    probed.check_credentials()  # 404/412: past authentication
    assert probed.credentials_accepted


def test_unreachable_atlas_raises_unavailable_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{closed_port()}/atlas/"
    client = AtlasClient(url, username=USERNAME, password=PASSWORD, environment="TEST", max_attempts=1)

    with pytest.raises(Unavailable) as raised:
        client.check_credentials()

    assert "could not connect" in raised.value.message
    assert str(raised.value).startswith(f"Atlas TEST at {url}code/")


def test_credentials_in_an_unreachable_url_never_show_in_errors() -> None:
    url = f"http://ops:url-Secret-42@127.0.0.1:{closed_port()}/atlas/"
    client = AtlasClient(url, username=USERNAME, password=PASSWORD, environment="TEST", max_attempts=1)

    with pytest.raises(Unavailable) as raised:
        client.list_sites({})

    assert "url-Secret-42" not in f"{raised.value} {raised.value.url}"
    assert "127.0.0.1" in raised.value.url


def test_credentials_in_the_url_never_show_in_atlas_errors(sim: SimulatorServer) -> None:
    url = sim.url.replace("http://", f"http://{USERNAME}:url-Secret-42@")
    client = make_client(sim, base_url=url)

    with pytest.raises(NotFound) as raised:
        client.update_site_profile(str(ObjectId()), profile_id(sim, PREVIOUS), etag="x")

    assert "url-Secret-42" not in f"{raised.value} {raised.value.url}"


# -- typed reads ----------------------------------------------------------------------------------


def test_get_site_of_unknown_id_returns_none(client: AtlasClient) -> None:
    assert client.get_site(str(ObjectId())) is None


def test_get_site_of_soft_deleted_site_returns_it_marked_deleted(
    sim: SimulatorServer, client: AtlasClient
) -> None:
    site = a_site(sim, "available")
    client.delete_available_site(site.id)

    found = client.get_site(site.id)

    assert found is not None
    assert (found.id, found.deleted) == (site.id, True)
