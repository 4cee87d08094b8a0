"""The simulator's HTTP server: persistent connections, enough threads, and a real stop.

A benchmark's client must be the limit, not the simulator: connections are kept alive (as
Apache in front of Atlas keeps them), slow requests never wait for a free thread, and `stop()`
makes Atlas gone for pooled connections too. Nothing here is timed.
"""

import http.client
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from bson import ObjectId

from tests.test_engine_faults import wait_for

AUTH = ("release-portal", "secret")


def session() -> requests.Session:
    s = requests.Session()
    s.auth = AUTH
    return s


def a_site(sim) -> dict:
    with sim.lock:
        return sim.db["sites"].find_one({"status": "installed", "_deleted": {"$ne": True}})


def test_requests_reuse_one_connection(simulator):
    sim = simulator("dev", sites=50)
    connection = http.client.HTTPConnection(sim.host, sim.port, timeout=30)
    try:
        connection.request("GET", "/version")
        first = connection.getresponse()
        first.read()
        sock = connection.sock
        for path in ("/sites?max_results=1", "/code?max_results=1", "/version"):
            connection.request("GET", path, headers={"Authorization": requests.auth._basic_auth_str(*AUTH)})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("Connection", "").lower() != "close"
            # http.client drops its socket after a response that closes the connection.
            assert connection.sock is sock
    finally:
        connection.close()
    assert first.status == 200 and first.getheader("Connection", "").lower() != "close"


def test_a_session_keeps_its_connection_across_writes(simulator):
    sim = simulator("dev", sites=50)
    site = a_site(sim)
    s = session()
    seen = []
    s.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response.headers))
    etag = s.get(f"{sim.url}sites/{site['_id']}").json()["_etag"]
    for status in ("down", "installed", "down"):
        response = s.patch(
            f"{sim.url}sites/{site['_id']}", json={"status": status}, headers={"If-Match": etag}
        )
        assert response.status_code == 200, response.text
        etag = response.json()["_etag"]
    assert all(headers.get("Connection", "").lower() != "close" for headers in seen)
    s.close()


def test_slow_requests_do_not_wait_for_each_other(simulator):
    sim = simulator("dev", sites=50)
    sim.set_faults(write_latency_ms=1500)
    clients = 48
    with ThreadPoolExecutor(clients) as pool:
        # DELETEs of ids that do not exist: slow, yet nothing changes.
        answers = list(
            pool.map(
                lambda _: requests.delete(f"{sim.url}sites/{ObjectId()}", auth=AUTH, timeout=60),
                range(clients),
            )
        )
    assert len({a.status_code for a in answers}) == 1 and answers[0].status_code < 500
    assert sim.max_writes_in_flight == clients  # all of them slept at the same time


def test_stop_closes_pooled_connections_and_the_port(simulator):
    sim = simulator("dev", sites=50)
    s = session()
    assert s.get(sim.url + "version").status_code == 200  # its connection is now idle in the pool
    raw = http.client.HTTPConnection(sim.host, sim.port, timeout=30)
    raw.request("GET", "/version")
    raw.getresponse().read()

    sim.stop()

    with pytest.raises(requests.ConnectionError):
        s.get(sim.url + "version")
    with pytest.raises(requests.ConnectionError):
        requests.get(sim.url + "version", timeout=30)
    raw.sock.settimeout(30)
    assert raw.sock.recv(1) == b""  # the server closed the kept-alive connection
    raw.close()
    sim.stop()  # a second stop does nothing


def test_stop_cuts_a_request_in_flight_and_applies_nothing_more(simulator, caplog):
    caplog.set_level(logging.INFO)
    sim = simulator("dev", sites=50)
    site = a_site(sim)
    s = session()
    etag = s.get(f"{sim.url}sites/{site['_id']}").json()["_etag"]
    sim.set_faults(write_latency_ms=1000)
    outcome = []

    def write() -> None:
        try:
            s.patch(
                f"{sim.url}sites/{site['_id']}",
                json={"status": "down"},
                headers={"If-Match": etag},
                timeout=60,
            )
            outcome.append("answered")
        except requests.ConnectionError:
            outcome.append("connection error")

    writer = threading.Thread(target=write)
    writer.start()
    wait_for(lambda: sim.injector.writes_in_flight == 1, what="the PATCH to sleep in Atlas")
    sim.stop()
    writer.join(timeout=30)

    assert outcome == ["connection error"]
    wait_for(lambda: sim.injector.writes_in_flight == 0, what="the abandoned request to end")
    with sim.lock:
        assert sim.db["sites"].find_one({"_id": site["_id"]})["status"] == "installed"
    assert not sim.events.of_kind("site_update")
    assert not [r for r in caplog.records if r.name.startswith(("waitress", "atlas.simulator"))]


def test_requests_are_logged_only_when_asked(simulator, caplog):
    caplog.set_level(logging.INFO)
    quiet = simulator("dev", sites=10)
    requests.get(quiet.url + "version", timeout=30)
    assert not [r for r in caplog.records if r.name.startswith(("waitress", "atlas.simulator"))]

    loud = simulator("dev", sites=10, log_requests=True)
    requests.get(loud.url + "version?x=1", timeout=30)
    lines = [r.getMessage() for r in caplog.records if r.name == "atlas.simulator.server"]
    assert len(lines) == 1 and '"GET /version?x=1 HTTP/1.1" 200' in lines[0]
