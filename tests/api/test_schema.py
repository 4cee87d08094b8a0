"""The OpenAPI schema validates, the docs page serves it without a CDN, and the examples it
documents have the shape of real responses."""

from __future__ import annotations

import pytest
import requests
from drf_spectacular.validation import validate_schema

from api import examples
from releases import services
from tests.support import R, configure_environments, member, tasks_not_sent

pytestmark = pytest.mark.django_db(transaction=True)


def same_shape(example, real, where="$") -> None:
    """The example's keys are the real document's, recursively (empty example values: any)."""
    if isinstance(example, dict) and example:
        assert isinstance(real, dict), where
        assert set(example) == set(real), f"{where}: {sorted(set(example) ^ set(real))}"
        for key, value in example.items():
            same_shape(value, real[key], f"{where}.{key}")
    elif isinstance(example, list) and example and real:
        same_shape(example[0], real[0], f"{where}[0]")


def test_the_schema_validates_and_the_docs_serve_it_locally(live_server):
    schema = requests.get(f"{live_server.url}/api/schema/?format=json", timeout=30)
    assert schema.status_code == 200
    document = schema.json()
    validate_schema(document)  # raises on an invalid OpenAPI 3 document
    paths = document["paths"]
    for path in (
        "/api/v1/plans/",
        "/api/v1/plans/{version}/launch/",
        "/api/v1/plans/{version}/steps/{number}/",
    ):
        assert path in paths, path
    assert document["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["token"]["description"],
    }
    docs = requests.get(f"{live_server.url}/api/docs/", timeout=30)
    assert (
        docs.status_code == 200 and "drf_spectacular_sidecar" in docs.text and "cdn" not in docs.text.lower()
    )


def test_the_documented_examples_are_real_responses(api, simulator):
    configure_environments({"DEV": simulator.of("DEV")})
    user = member("ops-lead", "prod-manager")
    services.create_plan("2.8.5", commit=R, user=user)
    client = api(user)

    preview = client.get("plans/2.8.5/launch/", stage="DEV")
    assert preview.status_code == 200, preview.text
    same_shape(examples.LAUNCH_PREVIEW_VALUE, preview.json())
    with tasks_not_sent():
        body = {"stage": "DEV", "confirmation": preview.json()["confirmation"]}
        launched = client.post("plans/2.8.5/launch/", body)
    assert launched.status_code == 202, launched.text
    assert launched.headers["Location"] == launched.json()["url"]
    same_shape(examples.LAUNCHED_VALUE, launched.json())
    same_shape(examples.STEP_VALUE, client.get("plans/2.8.5/steps/4/").json())
    same_shape(examples.STATUS_VALUE, client.get("plans/2.8.5/").json())
    refused = client.post("plans/2.8.5/launch/", {"step": 12, "yes": True, "confirm_environment": "PROD"})
    assert refused.status_code == 409
    same_shape(examples.ERROR_VALUE, refused.json())
