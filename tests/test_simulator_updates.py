"""The simulator behaves like Atlas for knowing that a site updated (atlas-api.md §3.3, §3.6).

Atlas's update queue runs W site updates at once; a site reports (statistics) only when drush or
its cron asks it to, on a separate command queue; its page answers 200, or 500 once broken by
its update. Judged from the simulator's event log (Atlas's side) and over real HTTP.
"""

import json
import secrets
import subprocess
import sys
import time

import pytest
import requests

from tests.test_simulator import AUTH, ROOT, code_payload, first, get, unused_port, write  # noqa: F401

RELEASE = "2.8.5"


# -- helpers ------------------------------------------------------------------------------------


def release_item(sim, version: str = RELEASE, update_database: bool = True) -> dict:
    """A new, non-current profile code item (steps 5-6 of the runbook)."""
    payload = code_payload(secrets.token_hex(20), version, is_current=False)
    payload["deploy"]["update_database"] = update_database
    response = write("POST", sim, "code", payload)
    assert response.status_code == 201, response.text
    return response.json()


def launched_sites(sim, count: int) -> list[dict]:
    items = get(sim, "sites", where={"status": "launched"}, sort="_id", max_results=count).json()["_items"]
    assert len(items) == count
    return items


def patch_profile(sim, site: dict, profile_id: str) -> None:
    fresh = get(sim, f"sites/{site['_id']}").json()
    response = write("PATCH", sim, f"sites/{site['_id']}", {"code": {"profile": profile_id}}, fresh["_etag"])
    assert response.status_code == 200, response.text


def drush_statistics(sim, site_ids: list[str], auth=AUTH) -> requests.Response:
    """Ask the sites for fresh reports, as the portal does: a drush item running
    `drush atlas-statistics`, its query set to the sites, then execute."""
    query = json.dumps({"_id": {"$in": site_ids}})
    found = get(sim, "drush", where={"label": "statistics"}).json()["_items"]
    if found:
        item = found[0]
        item = write("PATCH", sim, f"drush/{item['_id']}", {"query": query}, item["_etag"]).json()
    else:
        payload = {"label": "statistics", "commands": ["drush atlas-statistics"], "query": query}
        item = write("POST", sim, "drush", payload).json()
    return write("POST", sim, f"drush/{item['_id']}/execute", auth=auth)


def report(sim, site_id: str) -> dict:
    items = get(sim, "statistics", where={"site": site_id}).json()["_items"]
    assert len(items) == 1
    return items[0]


def kinds(sim, site_id: str) -> list[str]:
    return [event["kind"] for event in sim.events if event["id"] == site_id]


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s")


def reported(sim, site_id: str, after: int = 0) -> bool:
    """Whether the site wrote a report since the `after`-th event."""
    return any(
        event["kind"] == "statistics_report" and event["id"] == site_id for event in list(sim.events)[after:]
    )


def max_running(events: list[dict]) -> int:
    running = peak = 0
    for event in events:
        if event["kind"] == "update_started":
            running += 1
        elif event["kind"] == "update_finished" and not event.get("skipped"):
            running -= 1
        peak = max(peak, running)
    return peak


# -- the update queue ---------------------------------------------------------------------------


def test_the_update_queue_runs_at_most_its_workers_at_once(simulator):
    sim = simulator("dev", update_workers=2, update_ms=100)
    item = release_item(sim)
    sites = launched_sites(sim, 6)
    for site in sites:
        patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    events = list(sim.events)
    assert [e["id"] for e in events if e["kind"] == "update_queued"] == [s["_id"] for s in sites]
    assert len([e for e in events if e["kind"] == "update_finished"]) == 6
    assert max_running(events) == 2
    started = [e["at"] for e in events if e["kind"] == "update_started"]
    finished = [e["at"] for e in events if e["kind"] == "update_finished"]
    assert max(finished) - min(started) >= 3 * 0.1 * 0.9  # 6 updates, 2 at a time, 100 ms each


def test_an_update_starts_only_after_it_was_queued_and_in_queue_order(simulator):
    sim = simulator("dev", update_workers=1, update_ms=20)
    item = release_item(sim)
    sites = launched_sites(sim, 3)
    for site in sites:
        patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    for site in sites:
        assert kinds(sim, site["_id"]) == [
            "site_update",
            "update_queued",
            "update_started",
            "update_finished",
        ]
    started = [e["id"] for e in sim.events if e["kind"] == "update_started"]
    assert started == [s["_id"] for s in sites]


def test_a_code_patch_cascade_queues_an_update_for_each_site(simulator):
    sim = simulator("dev", update_ms=1)
    profile = first(sim, "code", {"meta.name": "express", "meta.is_current": True})
    write("PATCH", sim, f"code/{profile['_id']}", {"commit_hash": "9" * 40}, profile["_etag"])
    cascaded = sim.events.ids("cascade")
    queued = sim.events.of_kind("update_queued")
    assert cascaded and [e["id"] for e in queued] == cascaded
    assert {e["source"] for e in queued} == {"cascade"}


def test_a_second_patch_while_the_first_is_queued_runs_both_in_order(simulator):
    sim = simulator("dev", update_workers=1, update_ms=150)
    item = release_item(sim)
    previous = first(sim, "code", {"meta.version": "2.8.3"})
    busy, site = launched_sites(sim, 2)
    patch_profile(sim, busy, item["_id"])  # occupies the only worker
    patch_profile(sim, site, item["_id"])
    patch_profile(sim, site, previous["_id"])  # while the first is still queued
    assert sim.wait_for_updates(10)
    started = [e["profile"] for e in sim.events.of_kind("update_started") if e["id"] == site["_id"]]
    assert started == [item["_id"], previous["_id"]]
    drush_statistics(sim, [site["_id"]])
    assert sim.wait_for_commands(10)
    assert report(sim, site["_id"])["express_code_version"] == "2.8.3"


# -- what a site reports, and when -----------------------------------------------------------


def test_a_report_before_the_update_started_shows_the_old_version(simulator):
    sim = simulator("dev", update_workers=1, update_ms=1000, command_ms=1)
    item = release_item(sim)
    busy, site = launched_sites(sim, 2)
    patch_profile(sim, busy, item["_id"])
    patch_profile(sim, site, item["_id"])  # queued behind `busy`
    drush_statistics(sim, [site["_id"]])
    wait_for(lambda: reported(sim, site["_id"]))
    assert "update_started" not in kinds(sim, site["_id"])  # still queued when it reported
    statistics = report(sim, site["_id"])
    assert statistics["express_code_version"] == "2.8.4"  # the profile it ran before
    assert statistics["drupal_system_status"] is False


def test_a_report_while_the_update_runs_shows_the_new_version_with_pending_updates(simulator):
    sim = simulator("dev", update_workers=1, update_ms=1500, command_ms=1)
    item = release_item(sim)
    (site,) = launched_sites(sim, 1)
    patch_profile(sim, site, item["_id"])
    wait_for(lambda: "update_started" in kinds(sim, site["_id"]))
    drush_statistics(sim, [site["_id"]])
    wait_for(lambda: reported(sim, site["_id"]))
    assert "update_finished" not in kinds(sim, site["_id"])
    statistics = report(sim, site["_id"])
    assert statistics["express_code_version"] == RELEASE
    assert statistics["drupal_system_status"] is True  # pending database updates
    assert statistics["express_core_schema_version"] == 7284  # updb has not run yet


def test_a_report_after_the_update_shows_the_new_version_clean_and_newer(simulator):
    sim = simulator("dev", update_ms=20, command_ms=1)
    item = release_item(sim)
    (site,) = launched_sites(sim, 1)
    before = report(sim, site["_id"])
    patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    drush_statistics(sim, [site["_id"]])
    assert sim.wait_for_commands(10)
    after = report(sim, site["_id"])
    assert (after["express_code_version"], after["drupal_system_status"]) == (RELEASE, False)
    assert after["express_core_schema_version"] == 7285
    assert after["_updated"] != before["_updated"] and after["_version"] == before["_version"] + 1


def test_an_update_without_update_database_leaves_pending_updates(simulator):
    sim = simulator("dev", update_ms=5, command_ms=1)
    item = release_item(sim, update_database=False)
    (site,) = launched_sites(sim, 1)
    patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    drush_statistics(sim, [site["_id"]])
    assert sim.wait_for_commands(10)
    statistics = report(sim, site["_id"])
    assert (statistics["express_code_version"], statistics["drupal_system_status"]) == (RELEASE, True)


def test_only_drush_reports_change_statistics(simulator):
    sim = simulator("dev", update_ms=5)
    item = release_item(sim)
    (site,) = launched_sites(sim, 1)
    before = report(sim, site["_id"])
    patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    assert report(sim, site["_id"]) == before  # Atlas writes nothing back when an update ends
    assert before["_updated"] < "2021-04-30"  # seeded from cron before the population's date


def test_drush_reports_every_matching_site_and_only_those(simulator):
    sim = simulator("dev", command_ms=1)
    sites = launched_sites(sim, 5)
    drush_statistics(sim, [s["_id"] for s in sites[:3]])
    assert sim.wait_for_commands(10)
    (prepared,) = sim.events.of_kind("drush_prepare")
    assert prepared["matched"] == 3
    assert sorted(sim.events.ids("statistics_report")) == sorted(s["_id"] for s in sites[:3])


def test_drush_reads_the_query_when_its_prepare_task_runs(simulator):
    """Execute only queues drush_prepare: a query PATCHed after an execute, before the
    command queue got to it, is the one that runs."""
    sim = simulator("dev", command_workers=1, command_ms=600)
    sites = launched_sites(sim, 4)
    drush_statistics(sim, [sites[0]["_id"]])
    wait_for(lambda: sim.events.of_kind("drush_prepare"))
    drush_statistics(sim, [sites[1]["_id"]])  # queued behind sites[0]'s run
    item = get(sim, "drush", where={"label": "statistics"}).json()["_items"][0]
    later = json.dumps({"_id": {"$in": [sites[2]["_id"]]}})
    write("PATCH", sim, f"drush/{item['_id']}", {"query": later}, item["_etag"])
    assert sim.wait_for_commands(10)
    assert sim.events.ids("statistics_report") == [sites[0]["_id"], sites[2]["_id"]]


def test_a_drush_item_with_a_bad_query_runs_nothing_but_execute_still_answers_200(simulator):
    sim = simulator("dev", command_ms=1)
    payload = {"label": "broken", "commands": ["drush atlas-statistics"], "query": "{not json at all"}
    item = write("POST", sim, "drush", payload).json()
    response = write("POST", sim, f"drush/{item['_id']}/execute")
    assert response.status_code == 200
    assert sim.wait_for_commands(10)
    (prepared,) = sim.events.of_kind("drush_prepare")
    assert prepared["matched"] == 0 and prepared["error"]
    assert not sim.events.of_kind("statistics_report")


def test_drush_commands_are_unique_across_items(simulator):
    sim = simulator("dev")
    payload = {"label": "one", "commands": ["drush atlas-statistics"], "query": '{"path":"homepage"}'}
    assert write("POST", sim, "drush", payload).status_code == 201
    again = write("POST", sim, "drush", {**payload, "label": "two"})
    assert again.status_code == 422 and "commands" in again.json()["_issues"]


def test_an_account_without_the_drush_role_is_refused_with_a_403(simulator):
    sim = simulator("dev", command_ms=1)
    sim.deny_drush("release-portal")
    (site,) = launched_sites(sim, 1)
    response = drush_statistics(sim, [site["_id"]])
    assert response.status_code == 403
    assert "drush role" in response.json()["_error"]["message"]
    assert sim.wait_for_commands(5)
    assert not sim.events.of_kind("drush_execute") and not sim.events.of_kind("statistics_report")


def test_execute_with_bad_credentials_is_a_401(simulator):
    sim = simulator("dev", command_ms=1)
    (site,) = launched_sites(sim, 1)
    assert drush_statistics(sim, [site["_id"]], auth=("release-portal", "wrong")).status_code == 401
    assert not sim.events.of_kind("drush_execute")


def test_cron_reports_come_without_drush_when_asked_for(simulator):
    sim = simulator("dev", sites=20, cron_seconds=1)
    wait_for(lambda: len(set(sim.events.ids("statistics_report"))) >= 10, timeout=5)
    assert {e["source"] for e in sim.events.of_kind("statistics_report")} == {"cron"}


def test_no_cron_reports_by_default(simulator):
    sim = simulator("dev", sites=20)
    time.sleep(1.2)
    assert not sim.events.of_kind("statistics_report")


# -- pages --------------------------------------------------------------------------------------


def page(sim, path: str, **params) -> requests.Response:
    url = sim.site_url if path == "homepage" else f"{sim.site_url}/{path}"
    return requests.get(url, params=params, timeout=10, allow_redirects=False)


def test_a_site_page_answers_200_with_the_drupal_generator(simulator):
    sim = simulator("dev")
    (site,) = launched_sites(sim, 1)
    response = page(sim, site["path"], cachebust="123")  # the query string is ignored
    assert response.status_code == 200
    assert response.headers["X-Generator"].startswith("Drupal 7")
    (seen,) = sim.events.of_kind("page_get")
    assert (seen["id"], seen["path"], seen["status"]) == (site["_id"], site["path"], 200)


def test_the_homepage_answers_at_the_bare_site_url(simulator):
    sim = simulator("dev")
    homepage = first(sim, "sites", {"path": "homepage"})
    assert page(sim, "homepage").status_code == 200
    assert requests.get(sim.site_url + "/", timeout=10).status_code == 200
    assert sim.events.of_kind("page_get")[0]["id"] == homepage["_id"]
    assert requests.get(sim.site_url + "/homepage", timeout=10).status_code == 404


def test_pages_of_unknown_paths_and_of_sites_without_an_instance_are_404(simulator):
    sim = simulator("dev")
    assert page(sim, "no-such-site").status_code == 404
    down = first(sim, "sites", {"status": "down"})
    assert page(sim, down["path"]).status_code == 404


def test_a_site_serves_its_sub_pages(simulator):
    sim = simulator("dev")
    (site,) = launched_sites(sim, 1)
    assert page(sim, f"{site['path']}/news/today").status_code == 200


def test_a_deleted_site_page_is_404_even_when_its_delete_failed_its_etag_check(simulator):
    sim = simulator("dev")
    site = first(sim, "sites", {"status": "installed"})
    assert write("DELETE", sim, f"sites/{site['_id']}", etag="stale").status_code == 412
    assert page(sim, site["path"]).status_code == 404  # the instance was removed anyway (§3.4)


def test_pages_are_outside_atlas_and_its_faults(simulator):
    sim = simulator("dev", prefix="atlas")
    sim.set_faults(fail_rate=1.0)
    assert requests.get(sim.url + "version", timeout=10).status_code == 503
    assert page(sim, "homepage").status_code == 200
    assert sim.site_url == f"http://127.0.0.1:{sim.port}/web"


# -- broken sites -------------------------------------------------------------------------------


def test_a_site_broken_by_its_update_answers_500_once_the_update_ended(simulator):
    sim = simulator("dev", update_ms=500, command_ms=1)
    item = release_item(sim)
    (site,) = launched_sites(sim, 1)
    sim.break_on_update(site["path"])
    patch_profile(sim, site, item["_id"])
    wait_for(lambda: "update_started" in kinds(sim, site["_id"]))
    assert page(sim, site["path"]).status_code == 200  # during updb a page may still answer
    assert sim.wait_for_updates(10)
    (finished,) = sim.events.of_kind("update_finished")
    assert finished["broken"] is True
    response = page(sim, site["path"])
    assert response.status_code == 500 and "X-Generator" not in response.headers
    drush_statistics(sim, [site["_id"]])
    assert sim.wait_for_commands(10)
    statistics = report(sim, site["_id"])
    assert (statistics["express_code_version"], statistics["drupal_system_status"]) == (RELEASE, True)


def test_a_broken_site_can_report_clean_so_only_its_page_shows_it(simulator):
    sim = simulator("dev", update_ms=5, command_ms=1)
    item = release_item(sim)
    (site,) = launched_sites(sim, 1)
    sim.break_on_update(site["path"], report="clean")
    patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    drush_statistics(sim, [site["_id"]])
    assert sim.wait_for_commands(10)
    statistics = report(sim, site["_id"])
    assert (statistics["express_code_version"], statistics["drupal_system_status"]) == (RELEASE, False)
    assert page(sim, site["path"]).status_code == 500


def test_a_broken_site_that_cannot_bootstrap_writes_no_report(simulator):
    sim = simulator("dev", update_ms=5, command_ms=1)
    item = release_item(sim)
    (site,) = launched_sites(sim, 1)
    before = report(sim, site["_id"])
    sim.break_on_update(site["path"], report="none")
    patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    drush_statistics(sim, [site["_id"]])
    assert sim.wait_for_commands(10)
    assert report(sim, site["_id"]) == before
    assert sim.events.of_kind("drush_run")[-1]["ok"] is False


def test_a_broken_site_works_again_on_the_profile_it_ran_before(simulator):
    sim = simulator("dev", update_ms=5)
    item = release_item(sim)
    (site,) = launched_sites(sim, 1)
    sim.break_on_update(site["path"])
    patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    patch_profile(sim, site, item["_id"])  # a retry onto the same code: still broken
    assert sim.wait_for_updates(10)
    assert page(sim, site["path"]).status_code == 500
    patch_profile(sim, site, site["code"]["profile"])  # the rollback
    assert sim.wait_for_updates(10)
    assert page(sim, site["path"]).status_code == 200
    assert [e["broken"] for e in sim.events.of_kind("update_finished")] == [True, True, False]


@pytest.mark.parametrize(("rate", "broken"), [(0.0, 0), (1.0, 4)])
def test_the_broken_rate_breaks_that_share_of_updates_onto_new_code(simulator, rate, broken):
    sim = simulator("dev", update_ms=1, broken_rate=rate)
    item = release_item(sim)
    sites = launched_sites(sim, 4)
    for site in sites:
        patch_profile(sim, site, item["_id"])
    assert sim.wait_for_updates(10)
    assert sum(e["broken"] for e in sim.events.of_kind("update_finished")) == broken
    assert sum(page(sim, s["path"]).status_code == 500 for s in sites) == broken


# -- the command ----------------------------------------------------------------------------------


def test_the_command_serves_the_sites_pages_and_takes_the_update_options(unused_port):  # noqa: F811
    command = [sys.executable, "manage.py", "atlas_simulator", "--port", str(unused_port),
               "--environment", "dev", "--update-workers", "2", "--update-ms", "100",
               "--broken-rate", "0.5", "--command-ms", "5"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{unused_port}/web"
        wait_for(lambda: _answers(url), timeout=20)
        assert requests.get(url, timeout=5).headers["X-Generator"].startswith("Drupal 7")
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert f"pages at {url}" in output and "2 update workers, 100 ms per site update" in output


def test_the_command_refuses_a_broken_rate_outside_0_to_1():
    result = subprocess.run(
        [sys.executable, "manage.py", "atlas_simulator", "--broken-rate", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "--broken-rate" in result.stderr


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.ConnectionError:
        return False
