"""Test an environment's Atlas connection on request: the client's side-effect-free credentials
check (atlas-api.md §2), audited. Never shows the password: only its variable's name."""

from __future__ import annotations

from atlas.errors import AtlasError

from .models import AuditEvent, Environment, EnvironmentMisconfigured


def test_connection(environment: Environment, user) -> tuple[bool, str]:
    """Check `environment`'s URL and credentials against Atlas; returns (ok, one-line message)."""
    client = None
    try:
        client = environment.client()
        client.check_credentials()
    except (EnvironmentMisconfigured, AtlasError) as exc:
        ok, message = False, f"{environment.name}: {exc}"
    else:
        ok = True
        message = (
            f"{environment.name}: Atlas at {client.safe_base_url} accepted the credentials of "
            f"{environment.username} (password from {environment.password_env})"
        )
    finally:
        if client is not None:
            client.close()
    AuditEvent.record(
        "environment_test_connection",
        user=user,
        environment=environment,
        outcome=AuditEvent.Outcome.OK if ok else AuditEvent.Outcome.ERROR,
        message=message,
    )
    return ok, message
