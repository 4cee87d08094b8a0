"""The Atlas simulator, driven over real HTTP as the portal's client drives Atlas."""

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from atlas.simulator import SimulatorServer

AUTH = ("release-portal", "secret")
ROOT = Path(__file__).resolve().parent.parent


# -- helpers ------------------------------------------------------------------------------------


def _params(params: dict) -> dict:
    return {key: json.dumps(value) if isinstance(value, dict) else value for key, value in params.items()}


def get(atlas: SimulatorServer, path: str, **params) -> requests.Response:
    return requests.get(atlas.url + path, params=_params(params), timeout=30)


def all_items(atlas: SimulatorServer, resource: str, where: dict | None = None, **params) -> list[dict]:
    """Every item matching `where`, read page by page (as the portal's snapshot does)."""
    params = {"max_results": 2000, "sort": "_id", **params}
    if where is not None:
        params["where"] = where
    items, page = [], 1
    while True:
        body = get(atlas, resource, page=page, **params).json()
        items.extend(body["_items"])
        if "next" not in body["_links"]:
            return items
        page += 1


def write(method: str, atlas: SimulatorServer, path: str, payload=None, etag=None, auth=AUTH, timeout=30):
    headers = {"If-Match": etag} if etag else {}
    return requests.request(
        method, atlas.url + path, json=payload, headers=headers, auth=auth, timeout=timeout
    )


def first(atlas: SimulatorServer, resource: str, where: dict) -> dict:
    return get(atlas, resource, where=where, max_results=1).json()["_items"][0]


def current_profile(atlas: SimulatorServer) -> dict:
    where = {"meta.name": "express", "meta.code_type": "profile", "meta.is_current": True}
    return first(atlas, "code", where)


def code_payload(commit: str, version: str = "2.8.5", is_current: bool = True) -> dict:
    return {
        "git_url": "git@github.com:CuBoulder/express.git",
        "commit_hash": commit,
        "meta": {"name": "express", "version": version, "code_type": "profile", "is_current": is_current},
        "deploy": {"registry_rebuild": False, "cache_clear": True, "update_database": True},
    }


def sites_on(atlas: SimulatorServer, code_id: str) -> list[dict]:
    where = {"$or": [{"code.profile": code_id}, {"code.core": code_id}, {"code.package": code_id}]}
    return all_items(atlas, "sites", where)


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module")
def prod_atlas():
    with SimulatorServer("prod") as atlas:
        yield atlas


@pytest.fixture(scope="module")
def test_atlas():
    with SimulatorServer("test") as atlas:
        yield atlas


@pytest.fixture
def dev_atlas(simulator):
    return simulator("dev")


# -- Eve protocol: reads -------------------------------------------------------------------------


def test_collection_pages_by_100_by_default_with_next_link(prod_atlas):
    body = get(prod_atlas, "sites").json()
    assert len(body["_items"]) == 100
    assert body["_meta"]["max_results"] == 100
    assert body["_meta"]["total"] == 3000
    assert body["_links"]["next"]["href"] == "sites?page=2"


def test_max_results_is_capped_at_2000(prod_atlas):
    body = get(prod_atlas, "sites", max_results=5000).json()
    assert len(body["_items"]) == 2000
    assert body["_meta"]["max_results"] == 2000


def test_last_page_has_no_next_link(prod_atlas):
    body = get(prod_atlas, "sites", max_results=2000, page=2).json()
    assert len(body["_items"]) == 1000
    assert "next" not in body["_links"]


def test_paging_by_id_visits_every_site_once(prod_atlas):
    ids = [site["_id"] for site in all_items(prod_atlas, "sites", max_results=700)]
    assert len(ids) == len(set(ids)) == 3000


def test_where_in_selects_statuses(prod_atlas):
    sites = all_items(prod_atlas, "sites", {"status": {"$in": ["locked", "down"]}})
    assert sites
    assert {site["status"] for site in sites} == {"locked", "down"}


def test_where_ne_also_matches_a_missing_field(prod_atlas):
    bundle = first(prod_atlas, "code", {"meta.name": "cu_events_bundle"})
    total = get(prod_atlas, "sites").json()["_meta"]["total"]
    with_bundle = get(prod_atlas, "sites", where={"code.package": bundle["_id"]}).json()["_meta"]["total"]
    without = get(prod_atlas, "sites", where={"code.package": {"$ne": bundle["_id"]}}).json()["_meta"][
        "total"
    ]
    assert with_bundle > 0
    assert without == total - with_bundle


def test_where_nin_excludes_groups(prod_atlas):
    where = {"status": "launched", "update_group": {"$nin": [0, 1, 2, 3, 4, 5]}}
    groups = {site["update_group"] for site in all_items(prod_atlas, "sites", where)}
    assert groups == {6, 7, 8, 9, 10, 11, 12, 13}


def test_where_dotted_path_casts_object_id_strings(prod_atlas):
    profile = current_profile(prod_atlas)
    sites = all_items(prod_atlas, "sites", {"code.profile": profile["_id"], "status": "available"})
    assert len(sites) == 15
    assert all(site["code"]["profile"] == profile["_id"] for site in sites)


def test_where_dollar_where_is_a_400(prod_atlas):
    response = get(prod_atlas, "sites", where={"$where": "this.status == 'launched'"})
    assert response.status_code == 400
    assert response.json()["_status"] == "ERR"


def test_where_bad_json_is_a_400(prod_atlas):
    response = get(prod_atlas, "sites", where='{"status": ')
    assert response.status_code == 400


def test_projection_returns_the_fields_asked_for_and_meta_fields(prod_atlas):
    projection = {"sid": 1, "path": 1, "status": 1}
    site = get(prod_atlas, "sites", projection=projection, max_results=1).json()["_items"][0]
    assert {"sid", "path", "status", "_id", "_etag", "_updated"} <= set(site)
    assert "code" not in site


def test_site_is_readable_by_sid(prod_atlas):
    site = get(prod_atlas, "sites", max_results=1).json()["_items"][0]
    by_sid = get(prod_atlas, f"sites/{site['sid']}").json()
    assert by_sid["_id"] == site["_id"]


def test_sid_lookup_is_read_only(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    response = write("PATCH", dev_atlas, f"sites/{site['sid']}", {"update_group": 1}, site["_etag"])
    assert response.status_code == 405


def test_dates_use_atlas_date_format(prod_atlas):
    site = get(prod_atlas, "sites", max_results=1).json()["_items"][0]
    time.strptime(site["_updated"], "%Y-%m-%d %H:%M:%S GMT")


def test_version_route_answers_text(prod_atlas):
    response = get(prod_atlas, "version")
    assert response.text == "2.3.2"


def test_sites_agg_counts_by_status_and_group(prod_atlas):
    body = get(prod_atlas, "sites/agg").json()
    assert body["total"] == 3000
    assert body["status"]["available"] == 15
    assert sum(item["count"] for item in body["_items"]) == 3000


# -- Eve protocol: auth and concurrency ----------------------------------------------------------


def test_reads_are_public(dev_atlas):
    assert requests.get(dev_atlas.url + "sites", timeout=10).status_code == 200


def test_write_with_bad_credentials_is_a_401_with_eve_error(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    response = write(
        "PATCH", dev_atlas, f"code/{site['code']['profile']}", {}, "x", auth=("release-portal", "no")
    )
    assert response.status_code == 401
    assert response.json()["_error"]["code"] == 401


def test_write_without_credentials_is_a_401(dev_atlas):
    response = write("POST", dev_atlas, "sites", {"status": "pending"}, auth=None)
    assert response.status_code == 401


def test_extra_users_can_write(simulator):
    atlas = simulator("dev", users={"ops-lead": "hunter2"})
    profile = current_profile(atlas)
    response = write("PATCH", atlas, f"code/{profile['_id']}", {}, "x", auth=("ops-lead", "hunter2"))
    assert response.status_code == 412


def test_patch_without_if_match_is_a_428(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    response = write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 1})
    assert response.status_code == 428


def test_patch_with_stale_etag_is_a_412(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    assert write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 1}, site["_etag"]).ok
    response = write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 2}, site["_etag"])
    assert response.status_code == 412


def test_patch_bumps_version_and_keeps_history(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    patched = write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 2}, site["_etag"]).json()
    assert patched["_version"] == site["_version"] + 1
    versions = get(dev_atlas, f"sites/{site['_id']}", version="all").json()["_items"]
    assert [version["_version"] for version in versions] == [1, 2]


def test_created_by_and_modified_by_default_to_the_user(dev_atlas):
    created = write("POST", dev_atlas, "sites", {"status": "pending"}).json()
    site = get(dev_atlas, f"sites/{created['_id']}").json()
    assert site["created_by"] == site["modified_by"] == "release-portal"


# -- POST /code ----------------------------------------------------------------------------------


def test_post_code_with_existing_name_and_version_is_a_409(dev_atlas):
    response = write("POST", dev_atlas, "code", code_payload("a" * 40, version="2.8.4", is_current=False))
    assert response.status_code == 409
    assert response.json() == {"message": "Error: A profile named express-2.8.4 already exists."}


def test_post_code_with_existing_commit_hash_is_a_422(dev_atlas):
    existing = current_profile(dev_atlas)
    response = write("POST", dev_atlas, "code", code_payload(existing["commit_hash"]))
    assert response.status_code == 422
    assert "commit_hash" in response.json()["_issues"]


def test_post_code_requires_is_current(dev_atlas):
    payload = code_payload("b" * 40)
    del payload["meta"]["is_current"]
    response = write("POST", dev_atlas, "code", payload)
    assert response.status_code == 422


def test_post_code_with_partial_deploy_flags_is_a_422(dev_atlas):
    payload = {**code_payload("b" * 40), "deploy": {"update_database": False}}
    assert write("POST", dev_atlas, "code", payload).status_code == 422


def test_post_code_without_deploy_gets_the_default_flags(dev_atlas):
    payload = code_payload("b" * 40, is_current=False)
    del payload["deploy"]
    created = write("POST", dev_atlas, "code", payload).json()
    deploy = get(dev_atlas, f"code/{created['_id']}").json()["deploy"]
    assert deploy == {"registry_rebuild": False, "cache_clear": True, "update_database": True}


def test_post_code_records_a_code_deploy(dev_atlas):
    created = write("POST", dev_atlas, "code", code_payload("b" * 40, is_current=False)).json()
    assert dev_atlas.events.ids("code_deploy") == [created["_id"]]


def test_post_code_reuses_a_commit_hash_of_a_deleted_item(dev_atlas):
    first_post = write("POST", dev_atlas, "code", code_payload("c" * 40, is_current=False)).json()
    assert (
        write("DELETE", dev_atlas, f"code/{first_post['_id']}", etag=first_post["_etag"]).status_code == 204
    )
    response = write("POST", dev_atlas, "code", code_payload("c" * 40, version="2.8.6", is_current=False))
    assert response.status_code == 201


def test_post_current_code_demotes_the_previous_current_item(dev_atlas):
    old = current_profile(dev_atlas)
    created = write("POST", dev_atlas, "code", code_payload("d" * 40)).json()
    demoted = get(dev_atlas, f"code/{old['_id']}").json()
    assert demoted["meta"]["is_current"] is False
    assert demoted["_etag"] != old["_etag"]
    assert current_profile(dev_atlas)["_id"] == created["_id"]
    assert dev_atlas.events.ids("demote") == [old["_id"]]


def test_patch_is_current_demotes_the_other_current_item(dev_atlas):
    old = current_profile(dev_atlas)
    created = write("POST", dev_atlas, "code", code_payload("e" * 40, is_current=False)).json()
    response = write(
        "PATCH", dev_atlas, f"code/{created['_id']}", {"meta": {"is_current": True}}, created["_etag"]
    )
    assert response.status_code == 200
    assert get(dev_atlas, f"code/{old['_id']}").json()["meta"]["is_current"] is False
    assert current_profile(dev_atlas)["_id"] == created["_id"]


def test_patch_of_another_meta_field_keeps_is_current(dev_atlas):
    profile = current_profile(dev_atlas)
    write("PATCH", dev_atlas, f"code/{profile['_id']}", {"meta": {"label": "Express"}}, profile["_etag"])
    assert get(dev_atlas, f"code/{profile['_id']}").json()["meta"]["is_current"] is True


def test_dotted_patch_merges_into_meta(dev_atlas):
    created = write("POST", dev_atlas, "code", code_payload("f" * 40, is_current=False)).json()
    write("PATCH", dev_atlas, f"code/{created['_id']}", {"meta.label": "Express 2.8.5"}, created["_etag"])
    meta = get(dev_atlas, f"code/{created['_id']}").json()["meta"]
    assert meta == {"name": "express", "version": "2.8.5", "code_type": "profile", "is_current": False,
                    "label": "Express 2.8.5"}  # fmt: skip


# -- PATCH /code: the cascade --------------------------------------------------------------------


def test_patch_commit_hash_cascades_to_every_site_on_the_item(dev_atlas):
    profile = current_profile(dev_atlas)
    before = {site["_id"]: site for site in sites_on(dev_atlas, profile["_id"])}
    response = write(
        "PATCH", dev_atlas, f"code/{profile['_id']}", {"commit_hash": "1" * 40}, profile["_etag"]
    )
    assert response.status_code == 200
    after = {site["_id"]: site for site in sites_on(dev_atlas, profile["_id"])}
    assert after.keys() == before.keys()
    assert all(after[i]["_etag"] != before[i]["_etag"] for i in before)
    assert all(after[i]["_version"] == before[i]["_version"] + 1 for i in before)
    assert sorted(dev_atlas.events.ids("cascade")) == sorted(before)


def test_cascade_reaches_sites_that_use_the_item_as_a_package(dev_atlas):
    bundle = first(dev_atlas, "code", {"meta.name": "cu_events_bundle"})
    users = sites_on(dev_atlas, bundle["_id"])
    write(
        "PATCH",
        dev_atlas,
        f"code/{bundle['_id']}",
        {"git_url": "git@github.com:CuBoulder/b.git"},
        bundle["_etag"],
    )
    assert users
    assert sorted(dev_atlas.events.ids("cascade")) == sorted(site["_id"] for site in users)


def test_patch_commit_hash_with_meta_does_not_cascade(dev_atlas):
    profile = current_profile(dev_atlas)
    before = {site["_id"]: site["_etag"] for site in sites_on(dev_atlas, profile["_id"])}
    payload = {"commit_hash": "2" * 40, "meta": {"is_current": True}}
    assert write("PATCH", dev_atlas, f"code/{profile['_id']}", payload, profile["_etag"]).status_code == 200
    after = {site["_id"]: site["_etag"] for site in sites_on(dev_atlas, profile["_id"])}
    assert after == before
    assert dev_atlas.events.of_kind("cascade") == []


def test_patch_meta_version_change_cascades(dev_atlas):
    profile = current_profile(dev_atlas)
    count = len(sites_on(dev_atlas, profile["_id"]))
    write("PATCH", dev_atlas, f"code/{profile['_id']}", {"meta": {"version": "2.8.4-1"}}, profile["_etag"])
    assert len(dev_atlas.events.of_kind("cascade")) == count


def test_patch_label_only_does_not_cascade(dev_atlas):
    profile = current_profile(dev_atlas)
    write("PATCH", dev_atlas, f"code/{profile['_id']}", {"meta": {"label": "Relabelled"}}, profile["_etag"])
    assert dev_atlas.events.of_kind("cascade") == []


def test_cascade_site_updates_are_marked_as_cascades(dev_atlas):
    profile = current_profile(dev_atlas)
    write("PATCH", dev_atlas, f"code/{profile['_id']}", {"commit_hash": "3" * 40}, profile["_etag"])
    sources = {event["source"] for event in dev_atlas.events.of_kind("site_update")}
    assert sources == {"cascade"}


def test_delete_code_in_use_is_a_409(dev_atlas):
    profile = current_profile(dev_atlas)
    response = write("DELETE", dev_atlas, f"code/{profile['_id']}", etag=profile["_etag"])
    assert response.status_code == 409
    assert "in use" in response.json()["message"]


# -- PATCH and DELETE /sites ---------------------------------------------------------------------


def test_patch_site_profile_records_one_site_update(dev_atlas):
    created = write("POST", dev_atlas, "code", code_payload("4" * 40, is_current=False)).json()
    site = first(dev_atlas, "sites", {"path": "homepage"})
    response = write(
        "PATCH", dev_atlas, f"sites/{site['_id']}", {"code": {"profile": created["_id"]}}, site["_etag"]
    )
    assert response.status_code == 200
    updates = dev_atlas.events.of_kind("site_update")
    assert [(u["id"], u["profile"], u["source"]) for u in updates] == [
        (site["_id"], created["_id"], "client")
    ]


def test_patch_site_profile_merges_into_code(dev_atlas):
    created = write("POST", dev_atlas, "code", code_payload("5" * 40, is_current=False)).json()
    site = first(dev_atlas, "sites", {"path": "webcentral"})
    write("PATCH", dev_atlas, f"sites/{site['_id']}", {"code": {"profile": created["_id"]}}, site["_etag"])
    code = get(dev_atlas, f"sites/{site['_id']}").json()["code"]
    assert code["profile"] == created["_id"]
    assert code["core"] == site["code"]["core"]


def test_patch_site_profile_to_a_deleted_code_item_is_a_422(dev_atlas):
    created = write("POST", dev_atlas, "code", code_payload("6" * 40, is_current=False)).json()
    write("DELETE", dev_atlas, f"code/{created['_id']}", etag=created["_etag"])
    site = first(dev_atlas, "sites", {"status": "installed"})
    response = write(
        "PATCH", dev_atlas, f"sites/{site['_id']}", {"code": {"profile": created["_id"]}}, site["_etag"]
    )
    assert response.status_code == 422
    assert "must exist in resource 'code'" in json.dumps(response.json()["_issues"])


def test_delete_launched_site_is_a_409(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "launched"})
    response = write("DELETE", dev_atlas, f"sites/{site['_id']}", etag=site["_etag"])
    assert response.status_code == 409
    assert response.json() == {
        "message": "Instance is launched or launching. To delete, take instance down first."
    }
    assert dev_atlas.events.of_kind("site_remove") == []


def test_delete_with_stale_etag_is_a_412_but_the_instance_is_removed(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    response = write("DELETE", dev_atlas, f"sites/{site['_id']}", etag="stale")
    assert response.status_code == 412
    assert dev_atlas.events.ids("site_remove") == [site["_id"]]
    assert get(dev_atlas, f"sites/{site['_id']}").status_code == 200


def test_delete_without_if_match_is_a_428_but_the_instance_is_removed(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    assert write("DELETE", dev_atlas, f"sites/{site['_id']}").status_code == 428
    assert dev_atlas.events.ids("site_remove") == [site["_id"]]


def test_deleted_site_is_hidden_and_its_item_is_a_404_with_the_document(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    assert write("DELETE", dev_atlas, f"sites/{site['_id']}", etag=site["_etag"]).status_code == 204
    assert get(dev_atlas, "sites", where={"_id": site["_id"]}).json()["_items"] == []
    response = get(dev_atlas, f"sites/{site['_id']}")
    assert response.status_code == 404
    assert response.json()["_deleted"] is True
    assert get(dev_atlas, "sites", where={"_id": site["_id"]}, show_deleted=1).json()["_meta"]["total"] == 1


def test_delete_on_the_collection_is_a_405(dev_atlas):
    assert write("DELETE", dev_atlas, "sites").status_code == 405


def test_launching_site_is_launched_with_a_launch_group(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    write("PATCH", dev_atlas, f"sites/{site['_id']}", {"status": "launching"}, site["_etag"])
    launched = get(dev_atlas, f"sites/{site['_id']}").json()
    assert launched["status"] == "launched"
    assert launched["update_group"] in range(6)
    assert "launched" in launched["dates"]


# -- the pool ------------------------------------------------------------------------------------


def test_pool_refills_with_the_current_profile(dev_atlas):
    old_profile = current_profile(dev_atlas)
    new = write("POST", dev_atlas, "code", code_payload("7" * 40)).json()
    pool = all_items(dev_atlas, "sites", {"status": "available"})
    for site in pool:
        assert write("DELETE", dev_atlas, f"sites/{site['_id']}", etag=site["_etag"]).status_code == 204
    refilled = all_items(dev_atlas, "sites", {"status": "available"})
    assert len(refilled) == len(pool) == 4
    assert {site["code"]["profile"] for site in refilled} == {new["_id"]}
    assert old_profile["_id"] != new["_id"]
    assert len(dev_atlas.events.of_kind("pool_refill")) == 4


def test_pool_refills_after_the_configured_delay(simulator):
    atlas = simulator("dev", pool_refill_delay=0.3)
    site = first(atlas, "sites", {"status": "available"})
    write("DELETE", atlas, f"sites/{site['_id']}", etag=site["_etag"])
    assert get(atlas, "sites", where={"status": "available"}).json()["_meta"]["total"] == 3
    assert wait_for(lambda: get(atlas, "sites", where={"status": "available"}).json()["_meta"]["total"] == 4)


def test_pool_refills_when_a_site_is_taken_from_it(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "available"})
    write("PATCH", dev_atlas, f"sites/{site['_id']}", {"status": "installing"}, site["_etag"])
    assert get(dev_atlas, f"sites/{site['_id']}").json()["status"] == "installed"
    assert get(dev_atlas, "sites", where={"status": "available"}).json()["_meta"]["total"] == 4


def test_posted_site_gets_the_current_profile_and_becomes_available(dev_atlas):
    profile = current_profile(dev_atlas)
    created = write("POST", dev_atlas, "sites", {"status": "pending"}).json()
    site = get(dev_atlas, f"sites/{created['_id']}").json()
    assert site["code"]["profile"] == profile["_id"]
    assert site["status"] == "available"
    assert site["sid"].startswith("p1") and len(site["sid"]) == 12
    assert site["path"] == site["sid"]


# -- populations ---------------------------------------------------------------------------------


def test_prod_population_shape(prod_atlas):
    sites = all_items(prod_atlas, "sites", projection={"status": 1, "update_group": 1, "path": 1})
    by_status = Counter(site["status"] for site in sites)
    launched_groups = Counter(site["update_group"] for site in sites if site["status"] == "launched")
    installed_groups = {site["update_group"] for site in sites if site["status"] == "installed"}
    assert len(sites) == 3000
    assert by_status["available"] == 15
    assert by_status["locked"] > 0 and by_status["down"] > 0
    assert by_status["launched"] > by_status["installed"] > 0
    assert all(launched_groups[group] > 100 for group in range(6))
    assert all(launched_groups[group] > 0 for group in range(7, 14))
    assert installed_groups == {0, 1, 2}


def test_homepage_is_launched_in_group_6(prod_atlas):
    homepage = first(prod_atlas, "sites", {"path": "homepage"})
    assert (homepage["status"], homepage["update_group"]) == ("launched", 6)


def test_test_population_has_the_training_set_in_group_13(test_atlas):
    body = get(test_atlas, "sites/agg").json()
    training = all_items(test_atlas, "sites", {"update_group": 13})
    assert body["total"] == 800
    assert len(training) == 40
    assert {site["status"] for site in training} == {"launched"}
    assert body["status"]["available"] == 10
    assert body["update_group"]["6"] == 1


def test_dev_population_has_feature_sites_and_the_runbook_paths(dev_atlas):
    paths = {
        site["path"] for site in all_items(dev_atlas, "sites", {"path": {"$in": ["homepage", "webcentral"]}})
    }
    features = all_items(dev_atlas, "code", {"meta.version": {"$regex": "^feature"}})
    feature_sites = all_items(
        dev_atlas, "sites", {"code.profile": {"$in": [item["_id"] for item in features]}}
    )
    assert paths == {"homepage", "webcentral"}
    assert len(features) == 2
    assert len(feature_sites) == 12
    assert get(dev_atlas, "sites", where={"status": "available"}).json()["_meta"]["total"] == 4


def test_populations_are_deterministic_by_seed(simulator):
    one, two, other = simulator("dev", seed=3), simulator("dev", seed=3), simulator("dev", seed=4)
    sids = [[site["sid"] for site in all_items(atlas, "sites")] for atlas in (one, two, other)]
    assert sids[0] == sids[1] != sids[2]


def test_sites_option_scales_the_population(simulator):
    atlas = simulator("prod", sites=400)
    assert get(atlas, "sites").json()["_meta"]["total"] == 400


def test_sids_and_paths_are_unique(prod_atlas):
    sites = all_items(prod_atlas, "sites", projection={"sid": 1, "path": 1})
    assert len({site["sid"] for site in sites}) == len({site["path"] for site in sites}) == 3000


def test_seeding_3000_sites(simulator):
    atlas = simulator("prod")
    print(f"\nseeded 3,000 prod sites in {atlas.seed_seconds:.2f} s")
    assert get(atlas, "sites").json()["_meta"]["total"] == 3000
    assert atlas.seed_seconds > 0


def test_simulators_do_not_share_data(simulator):
    one, two = simulator("dev"), simulator("dev")
    write("POST", one, "sites", {"status": "pending"})
    assert get(one, "sites").json()["_meta"]["total"] == get(two, "sites").json()["_meta"]["total"] + 1


def test_prefix_serves_the_api_under_a_path(simulator):
    atlas = simulator("dev", prefix="atlas")
    assert atlas.url.endswith("/atlas/")
    assert get(atlas, "version").text == "2.3.2"
    assert requests.get(f"http://127.0.0.1:{atlas.port}/version", timeout=10).status_code == 404


# -- fault injection -----------------------------------------------------------------------------


def test_fail_rate_answers_503_without_applying_the_write(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    dev_atlas.set_faults(fail_rate=1.0)
    response = write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 2}, site["_etag"])
    dev_atlas.set_faults()
    assert response.status_code == 503
    assert get(dev_atlas, f"sites/{site['_id']}").json()["_etag"] == site["_etag"]


def test_fail_rate_fails_about_that_share_of_requests(dev_atlas):
    dev_atlas.set_faults(fail_rate=0.3)
    statuses = Counter(get(dev_atlas, "version").status_code for _ in range(200))
    assert 30 <= statuses[503] <= 90
    assert statuses[503] + statuses[200] == 200


def test_fail_next_fails_only_the_next_requests(dev_atlas):
    dev_atlas.set_faults(fail_next=2)
    assert [get(dev_atlas, "version").status_code for _ in range(3)] == [503, 503, 200]


def test_write_latency_delays_writes_only(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    dev_atlas.set_faults(write_latency_ms=200)
    started = time.monotonic()
    get(dev_atlas, "version")
    read_time = time.monotonic() - started
    write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 1}, site["_etag"])
    write_time = time.monotonic() - started - read_time
    assert read_time < 0.15 <= 0.2 <= write_time


def test_parallel_writers_overlap_their_latency(dev_atlas):
    sites = all_items(dev_atlas, "sites", {"status": "installed"})[:32]
    dev_atlas.set_faults(write_latency_ms=50)

    def patch_all(chunk):
        for site in chunk:
            write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 0}, site["_etag"])

    def timed(chunks):
        started = time.monotonic()
        threads = [threading.Thread(target=patch_all, args=(chunk,)) for chunk in chunks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.monotonic() - started

    serial = timed([sites[:16]])
    parallel = timed([sites[16 + i :: 8] for i in range(8)])
    print(f"\n16 writes at 50 ms: serial {serial:.2f} s, 8 writers {parallel:.2f} s")
    assert serial >= 16 * 0.05
    assert parallel < serial / 2.5


def test_slow_answer_applies_the_write_before_the_client_times_out(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    dev_atlas.set_faults(slow_ms=1000, slow_rate=1.0)
    with pytest.raises(requests.Timeout):
        write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 2}, site["_etag"], timeout=0.3)
    dev_atlas.set_faults()
    assert get(dev_atlas, f"sites/{site['_id']}").json()["update_group"] == 2


def test_etag_race_makes_a_site_patch_a_412(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    dev_atlas.set_faults(etag_race_rate=1.0)
    response = write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 2}, site["_etag"])
    assert response.status_code == 412
    dev_atlas.set_faults()
    fresh = get(dev_atlas, f"sites/{site['_id']}").json()
    assert write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 2}, fresh["_etag"]).ok


def test_touch_site_makes_the_etag_stale(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    assert dev_atlas.touch_site(site["_id"])
    response = write("PATCH", dev_atlas, f"sites/{site['_id']}", {"update_group": 2}, site["_etag"])
    assert response.status_code == 412


def test_reset_events_empties_the_log(dev_atlas):
    site = first(dev_atlas, "sites", {"status": "installed"})
    write("DELETE", dev_atlas, f"sites/{site['_id']}", etag=site["_etag"])
    dev_atlas.reset_events()
    assert list(dev_atlas.events) == []


# -- the command ---------------------------------------------------------------------------------


def test_command_serves_without_a_migrated_database(tmp_path, unused_port):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'absent.sqlite3'}",
        "PATH": "/usr/bin:/bin",
        "DEBUG": "true",
    }
    command = [sys.executable, "manage.py", "atlas_simulator", "--port", str(unused_port),
               "--environment", "dev", "--prefix", "atlas"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{unused_port}/atlas/version"
        assert wait_for(lambda: _answers(url), timeout=20)
        assert requests.get(url, timeout=5).text == "2.3.2"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert "secret" not in output
    assert not (tmp_path / "absent.sqlite3").exists()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.ConnectionError:
        return False


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
