"""The client's verification reads and requests, over real HTTP against the simulator:
statistics in bulk, the drush item and its execute, and the sites' pages (atlas-api.md §3.6)."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from atlas.client import AtlasClient, site_page_url
from atlas.errors import AuthenticationError, DrushRoleMissing
from atlas.types import NEVER, Statistics

COMMANDS = ["drush atlas-statistics"]


def client_for(sim, password: str = "secret", **kwargs) -> AtlasClient:
    return AtlasClient(
        sim.url, username="release-portal", password=password, environment=sim.environment, **kwargs
    )


def record_requests(client: AtlasClient) -> list:
    """Every request the client's Atlas session sends (method, path, query, headers)."""
    sent = []

    def hook(response, *args, **kwargs):
        parts = urlsplit(response.request.url)
        sent.append((response.request.method, parts.path, parse_qs(parts.query), response))

    client.session.hooks["response"].append(hook)
    return sent


def ids_in(query: dict) -> list[str]:
    return json.loads(query["where"][0])["site"]["$in"]


def release_profile(client: AtlasClient) -> str:
    payload = {
        "git_url": "git@github.com:CuBoulder/express.git",
        "commit_hash": "c" * 40,
        "meta": {"name": "express", "version": "2.8.5", "code_type": "profile", "is_current": False},
        "deploy": {"registry_rebuild": False, "cache_clear": True, "update_database": True},
    }
    return client.create_code(payload).id


# -- statistics ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_atlas():
    from atlas.simulator import SimulatorServer

    with SimulatorServer("prod", sites=4600, pool_refill_delay=0) as sim:
        yield sim


def test_statistics_of_4500_sites_take_three_gets_of_at_most_2000_ids(big_atlas):
    client = client_for(big_atlas)
    site_ids = [site.id for site in client.list_sites({})][:4500]
    sent = record_requests(client)
    found = client.statistics(site_ids)
    assert [(method, path) for method, path, *_ in sent] == [("GET", "/statistics")] * 3
    assert [len(ids_in(query)) for _, _, query, _ in sent] == [2000, 2000, 500]
    assert sorted(id for _, _, query, _ in sent for id in ids_in(query)) == sorted(site_ids)
    with big_atlas.lock:
        expected = {
            str(item["site"])
            for item in big_atlas.db["statistics"].find({"_deleted": {"$ne": True}}, {"site": 1})
        }
    assert set(found) == expected & set(site_ids)


def test_a_report_is_parsed_into_version_error_and_an_aware_time(big_atlas):
    client = client_for(big_atlas)
    site = client.list_sites({"status": "launched"})[0]
    (report,) = client.statistics([site.id]).values()
    assert isinstance(report, Statistics)
    assert (report.site_id, report.version, report.error) == (site.id, "2.8.4", False)
    assert report.updated.tzinfo is not None and report.updated < datetime(2021, 4, 30, tzinfo=UTC)
    assert report.schema_version == 7284


def test_a_site_that_never_reported_has_no_version_and_no_status(big_atlas):
    client = client_for(big_atlas)
    pool_site = client.list_sites({"status": "available"})[0]
    report = client.statistics([pool_site.id])[pool_site.id]
    assert (report.version, report.error) == (None, None)
    assert report.updated > NEVER


def test_no_ids_sends_nothing_and_unknown_ids_are_absent(big_atlas):
    client = client_for(big_atlas)
    sent = record_requests(client)
    assert client.statistics([]) == {}
    assert sent == []
    assert client.statistics(["0" * 24]) == {}


def test_statistics_showing_a_version_read_only_the_clean_reports_of_it(simulator):
    """`showing`: only reports of that version with no error-level status; `since`: only reports
    written after that time (Atlas's clock): one GET, the filter applied by Atlas."""
    sim = simulator("dev")
    client = client_for(sim)
    site_ids = [site.id for site in client.list_sites({"status": {"$in": ["installed", "launched"]}})]
    with sim.lock:  # two sites with an error-level status, one reporting another version
        sim.db["statistics"].update_many(
            {"site": {"$in": site_ids[:2]}}, {"$set": {"drupal_system_status": True}}
        )
        sim.db["statistics"].update_one({"site": site_ids[2]}, {"$set": {"express_code_version": "2.8.3"}})
    everything = client.statistics(site_ids)
    version = everything[site_ids[3]].version
    sent = record_requests(client)
    clean = client.statistics(site_ids, showing=version)
    assert len(sent) == 1
    assert set(clean) == {id for id, r in everything.items() if r.version == version and r.error is False}
    assert not set(clean) & set(site_ids[:3]) and site_ids[3] in clean
    times = sorted({r.updated for r in clean.values()})
    assert len(times) > 1  # the seed's reports were written at different times
    assert client.statistics(site_ids, showing=version, since=times[-1]) == {}
    assert client.statistics(site_ids, showing=version, since=NEVER) == clean  # no time: no term
    later = {id for id, r in clean.items() if r.updated > times[0]}
    assert set(client.statistics(site_ids, showing=version, since=times[0])) == later


def test_reports_since_counts_the_sites_that_reported_without_reading_a_report(simulator):
    """`reports_since(ids, t)`: how many of the sites wrote their report at or after `t` (Atlas's
    clock), counted by Atlas: one GET per chunk of ids that returns no item."""
    sim = simulator("dev")
    client = client_for(sim, statistics_chunk=25)
    site_ids = [site.id for site in client.list_sites({"status": {"$in": ["installed", "launched"]}})][:40]
    everything = client.statistics(site_ids)
    times = sorted(r.updated for r in everything.values())
    middle = times[len(times) // 2]
    sent = record_requests(client)
    assert client.reports_since(site_ids, middle) == sum(
        1 for r in everything.values() if r.updated >= middle
    )
    assert [len(ids_in(query)) for _, _, query, _ in sent] == [25, 15]
    assert all(response.json()["_items"] == [] for *_, response in sent)
    assert client.reports_since(site_ids, times[-1] + timedelta(seconds=1)) == 0
    assert client.reports_since([], middle) == 0


def test_silent_since_names_the_sites_whose_last_report_is_older(simulator):
    """`silent_since(ids, t)`: the sites whose report was last written before `t` (Atlas's clock),
    read by their site id only; a site that reported at or after `t` is not named."""
    sim = simulator("dev")
    client = client_for(sim, statistics_chunk=25)
    site_ids = [site.id for site in client.list_sites({"status": {"$in": ["installed", "launched"]}})][:40]
    everything = client.statistics(site_ids)
    middle = sorted(r.updated for r in everything.values())[len(everything) // 2]
    assert client.silent_since(site_ids, middle) == {id for id, r in everything.items() if r.updated < middle}
    assert client.silent_since(site_ids, datetime(2000, 1, 1, tzinfo=UTC)) == set()


def test_statistics_follow_pages_within_a_chunk(simulator):
    sim = simulator("dev")
    client = client_for(sim, page_size=10, statistics_chunk=25)
    site_ids = [site.id for site in client.list_sites({"status": {"$in": ["installed", "launched"]}})][:50]
    sent = record_requests(client)
    found = client.statistics(site_ids)
    assert set(found) == set(site_ids)
    assert len(sent) == 6  # two chunks of 25 ids, each read in pages of 10, 10 and 5


def test_statistics_halve_their_chunks_when_atlas_refuses_a_long_url(big_atlas):
    client = client_for(big_atlas)
    site_ids = [site.id for site in client.list_sites({"status": "launched"})][:600]
    big_atlas.set_faults(max_url_length=8190)  # Apache's LimitRequestLine
    try:
        sent = record_requests(client)
        found = client.statistics(site_ids)
        assert set(found) == set(site_ids)
        refused = [response for *_, response in sent if response.status_code == 414]
        assert refused and client.statistics_chunk < 600
        del sent[:]
        client.statistics(site_ids)
        assert all(response.status_code == 200 for *_, response in sent)  # the chunk size was learned
    finally:
        big_atlas.set_faults()


# -- drush --------------------------------------------------------------------------------------


def test_drush_item_is_created_once_then_found_by_its_label(simulator):
    sim = simulator("dev")
    client = client_for(sim)
    item = client.drush_item("release portal: statistics", COMMANDS)
    assert (item.label, item.commands) == ("release portal: statistics", tuple(COMMANDS))
    assert item.query and json.loads(item.query) == {"_id": {"$in": []}}  # runs on no site
    sent = record_requests(client)
    assert client.drush_item("release portal: statistics", COMMANDS) == item
    assert [method for method, *_ in sent] == ["GET"]


def test_drush_item_sets_the_commands_of_an_item_found_by_label(simulator):
    sim = simulator("dev")
    client = client_for(sim)
    client.drush_item("portal", ["drush cc all"])
    item = client.drush_item("portal", COMMANDS)
    assert item.commands == tuple(COMMANDS)
    assert client.drush_item("portal", COMMANDS).etag == item.etag


def test_drush_item_uses_an_item_that_already_has_these_commands(simulator):
    """Atlas keeps `commands` unique across drush items: a POST with the same commands is a 422."""
    sim = simulator("dev")
    client = client_for(sim)
    theirs = client.drush_item("someone's item", COMMANDS)
    assert client.drush_item("release portal", COMMANDS).id == theirs.id


def test_run_drush_patches_the_query_with_if_match_then_executes(simulator):
    sim = simulator("dev", command_ms=1)
    client = client_for(sim)
    item = client.drush_item("portal", COMMANDS)
    sites = client.list_sites({"status": "launched"})[:3]
    sent = record_requests(client)
    ran = client.run_drush(item, {"_id": {"$in": [site.id for site in sites]}})
    (patch, execute) = [(method, path, response) for method, path, _, response in sent]
    assert patch[:2] == ("PATCH", f"/drush/{item.id}")
    assert patch[2].request.headers["If-Match"] == item.etag
    assert execute[:2] == ("POST", f"/drush/{item.id}/execute")
    assert ran.etag != item.etag and json.loads(ran.query) == {"_id": {"$in": [s.id for s in sites]}}
    assert sim.wait_for_commands(10)
    assert sorted(sim.events.ids("statistics_report")) == sorted(site.id for site in sites)


def test_run_drush_re_reads_a_stale_item_and_goes_on(simulator):
    sim = simulator("dev", command_ms=1)
    client = client_for(sim)
    stale = client.drush_item("portal", COMMANDS)
    fresh = client.run_drush(stale, {"path": "homepage"})  # moves the item's ETag on
    client.run_drush(stale, {"path": "webcentral"})  # 412, re-read, sent again
    assert fresh.etag != stale.etag
    assert sim.wait_for_commands(10)
    assert len(sim.events.of_kind("drush_execute")) == 2
    assert len(sim.events.ids("statistics_report")) == 2


def test_run_drush_without_the_drush_role_is_a_clear_error(simulator):
    sim = simulator("dev")
    client = client_for(sim)
    item = client.drush_item("portal", COMMANDS)
    sim.deny_drush("release-portal")
    with pytest.raises(DrushRoleMissing, match="drush role") as refused:
        client.run_drush(item, {"path": "homepage"})
    assert isinstance(refused.value, AuthenticationError) and refused.value.status == 403


def test_run_drush_with_bad_credentials_is_an_authentication_error(simulator):
    sim = simulator("dev")
    item = client_for(sim).drush_item("portal", COMMANDS)
    with pytest.raises(AuthenticationError) as refused:
        client_for(sim, password="wrong").run_drush(item, {"path": "homepage"})
    assert not isinstance(refused.value, DrushRoleMissing) and refused.value.status == 401


def test_a_site_is_seen_updated_only_after_its_update_ran(simulator):
    """What the portal's verification relies on, end to end through the client."""
    sim = simulator("dev", update_workers=1, update_ms=1000, command_ms=1)
    client = client_for(sim)
    release = release_profile(client)
    site = client.list_sites({"path": "webcentral"})[0]
    patched = client.update_site_profile(site.id, release, etag=site.etag)
    patched_at = patched.updated  # Atlas's clock, whole seconds
    assert patched_at > NEVER
    item = client.drush_item("portal", COMMANDS)
    client.run_drush(item, {"_id": {"$in": [site.id]}})
    assert sim.wait_for_commands(10)
    early = client.statistics([site.id])[site.id]
    assert early.updated >= patched_at
    assert (early.version, early.error) == ("2.8.5", True)  # updating: database updates pending
    assert client.statistics([site.id], showing="2.8.5") == {}  # not clean yet: nothing read
    assert sim.wait_for_updates(10)
    client.run_drush(item, {"_id": {"$in": [site.id]}})
    assert sim.wait_for_commands(10)
    late = client.statistics([site.id])[site.id]
    assert (late.version, late.error) == ("2.8.5", False)
    assert client.statistics([site.id], showing="2.8.5", since=patched_at) == {site.id: late}
    assert client.statistics([site.id], showing="2.8.4") == {}
    assert client.statistics([site.id], showing="2.8.5", since=late.updated) == {}  # only later ones
    assert client.page_status(site_page_url(sim.site_url, site.path)) == 200


# -- pages --------------------------------------------------------------------------------------


def test_site_page_url_puts_the_homepage_at_the_base_url():
    assert site_page_url("https://www.colorado.edu/", "homepage") == "https://www.colorado.edu"
    assert site_page_url("https://www.colorado.edu/", "physics") == "https://www.colorado.edu/physics"
    assert site_page_url("http://127.0.0.1:5101/web", "p1abc") == "http://127.0.0.1:5101/web/p1abc"
    assert site_page_url("https://x.edu", "a b") == "https://x.edu/a%20b"


def test_page_status_reads_what_the_sites_answer(simulator):
    sim = simulator("dev", update_ms=1)
    client = client_for(sim)
    homepage, broken = (
        client.list_sites({"path": "homepage"})[0],
        client.list_sites({"status": "launched"})[1],
    )
    sim.break_on_update(broken.path)
    client.update_site_profile(broken.id, release_profile(client), etag=broken.etag)
    assert sim.wait_for_updates(10)
    assert client.page_status(site_page_url(sim.site_url, homepage.path)) == 200
    assert client.page_status(site_page_url(sim.site_url, broken.path)) == 500
    assert client.page_status(site_page_url(sim.site_url, "no-such-site")) == 404
    assert client.pages_requested == 3


class _Pages(BaseHTTPRequestHandler):
    """A web server that redirects, stalls or answers, and remembers what it was sent."""

    seen: list = []

    def do_GET(self) -> None:
        _Pages.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        if self.path.startswith("/moved"):
            self.send_response(301)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web():
    _Pages.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_page_status_does_not_follow_redirects_nor_send_credentials(web):
    client = AtlasClient(web + "/atlas/", username="release-portal", password="secret")
    assert client.page_status(web + "/moved") == 301
    assert [path.split("?")[0] for path, _ in _Pages.seen] == ["/moved"]
    assert "Authorization" not in _Pages.seen[0][1]


def test_page_status_busts_caches_with_a_fresh_query_string(web):
    client = AtlasClient(web + "/atlas/", username="u", password="p")
    client.page_status(web + "/physics")
    client.page_status(web + "/physics?lang=en")
    (first, _), (second, _) = _Pages.seen
    assert first.startswith("/physics?portal-check=")
    assert second.startswith("/physics?lang=en&portal-check=")
    assert first.split("=")[1] != second.split("=")[-1]


def test_page_status_is_none_when_the_page_does_not_answer_in_time(web):
    client = AtlasClient(web + "/atlas/", username="u", password="p", page_timeout=0.3)
    started = time.monotonic()
    assert client.page_status(web + "/slow") is None
    assert time.monotonic() - started < 1.5
    assert client.page_status("http://127.0.0.1:9/unreachable") is None
