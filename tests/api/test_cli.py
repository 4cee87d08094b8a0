"""The `portal` command on its own: it installs alone (imports only the standard library and
requests), refuses plain http:// to anything but localhost, and exits 2 on bad usage."""

from __future__ import annotations

import ast
import io
import sys
import tomllib

import pytest

from tests.api.conftest import CLI_SOURCE

sys.path.insert(0, str(CLI_SOURCE))
from portal_cli import main as cli  # noqa: E402
from portal_cli.http import Usage, check_url  # noqa: E402


def test_the_client_imports_only_the_standard_library_and_requests():
    project = tomllib.loads((CLI_SOURCE.parent / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["requests>=2.31"]
    assert project["scripts"] == {"portal": "portal_cli.main:main"}
    imported = set()
    for path in (CLI_SOURCE / "portal_cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names <= {"requests", "portal_cli"}, imported


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://portal.example.edu", True),
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000/", True),
        ("http://portal.example.edu", False),
        ("ftp://portal.example.edu", False),
    ],
)
def test_plain_http_only_to_localhost(url, allowed):
    if allowed:
        assert check_url(url, allow_http=False).endswith("/")
    else:
        with pytest.raises(Usage):
            check_url(url, allow_http=False)
    assert check_url("http://portal.internal", allow_http=True) == "http://portal.internal/"


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],  # no VERSION
        ["launch", "2.8.5"],  # no --step, --next or --stage
        ["launch", "2.8.5", "--stag", "DEV"],  # abbreviated: refused, never guessed
        ["launch", "2.8.5", "--stage", "DEV", "--user", "ops-lead"],  # the token says who
        ["status", "2.8.5", "--timeout", "5"],
    ],
)
def test_bad_usage_exits_2(argv, monkeypatch):
    monkeypatch.setenv("PORTAL_URL", "https://portal.example.edu")
    monkeypatch.setenv("PORTAL_TOKEN", "erp_x")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv, stderr=err)
    assert exited.value.code == 2


def test_missing_configuration_exits_2(monkeypatch):
    monkeypatch.delenv("PORTAL_URL", raising=False)
    monkeypatch.delenv("PORTAL_TOKEN", raising=False)
    err = io.StringIO()
    assert cli.main(["status", "2.8.5"], stderr=err) == 2 and "PORTAL_URL" in err.getvalue()
    monkeypatch.setenv("PORTAL_URL", "http://portal.example.edu")
    assert cli.main(["status", "2.8.5"], stderr=err) == 2 and "refusing plain http://" in err.getvalue()
