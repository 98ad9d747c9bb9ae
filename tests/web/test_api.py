"""The REST API and pages of a real node: no session, no data; CSRF on every
change; a viewer changes nothing; lockout; logins recorded; users from the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dicomnode.synthetic import write_ct_series
from tests.helpers import NodeProcess, storescu, wait_for, write_config
from tests.web.console import (
    ADMIN,
    VIEWER,
    add_user,
    client,
    console_config,
    login,
    users,
)

pytestmark = [pytest.mark.peers]

#: A wrong password tried.
GUESS = "guessed-xyzzy-1"

#: Pages that must send a visitor without a session to the login page.
PAGES = [
    "/",
    "/studies",
    "/deliveries",
    "/rules",
    "/destinations",
    "/pipelines",
    "/audit",
    "/config",
    "/studies/1.2.3",
]


@pytest.fixture
def console_node(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> tuple[NodeProcess, int, str]:
    """A node with its console, an admin and a viewer, and one CT study held."""
    config, port = console_config(tmp_path)
    path = write_config(tmp_path / "users.yaml", config)
    add_user(path, *ADMIN, "admin")
    add_user(path, *VIEWER, "viewer")
    node = node_process(config)
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    assert storescu(series.paths, node.port).returncode == 0
    return node, port, series.study_uid


def test_nothing_answers_without_a_session_but_health_and_metrics(console_node) -> None:
    _node, port, study = console_node
    http = client(port)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(path).status_code == 200, path
    assert http.get("/readyz").json()["checks"]["console"] == {"ok": True, "detail": "running"}
    spec = http.get("/api/v1/openapi.json").json()
    checked = 0
    for template, operations in spec["paths"].items():
        path = (
            template.replace("{study_uid}", study)
            .replace("{job_id}", "1")
            .replace("{delivery_id}", "1")
        )
        for method in operations:
            if (method, template) == ("post", "/api/v1/session"):
                continue  # the login itself
            answer = http.request(method.upper(), path, headers={"X-CSRF-Token": "x"})
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert study not in answer.text
            checked += 1
    assert checked >= 10
    for page in PAGES:
        answer = http.get(page)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    # a page's form POST without a session: to the login page too, nothing done
    for form in ("/jobs/1/retry", "/destinations/pacs/test", "/logout"):
        answer = http.post(form, data={"csrf_token": "x"})
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    answer = http.post("/rules", data={"csrf_token": "x", "text": "routing: {}", "action": "save"})
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_a_change_needs_the_csrf_token_and_an_admin(console_node) -> None:
    _node, port, study = console_node
    wait_for(lambda: client(port).get("/readyz").status_code == 200, 30, "the node to be ready")
    admin, admin_csrf = login(port, *ADMIN)
    viewer, viewer_csrf = login(port, *VIEWER)
    detail = wait_for(
        lambda: (a := admin.get(f"/api/v1/studies/{study}")).status_code == 200 and a.json(),
        30,
        "the study to be listed",
    )
    job_id = detail["rounds"][0]["round"]["id"]
    # reading works for both
    assert viewer.get("/api/v1/studies").status_code == 200
    assert [s["study_instance_uid"] for s in viewer.get("/api/v1/studies").json()] == [study]
    # no token, a wrong token: 403, for the admin too
    assert admin.post(f"/api/v1/jobs/{job_id}/retry").status_code == 403
    assert (
        admin.post(f"/api/v1/jobs/{job_id}/retry", headers={"X-CSRF-Token": viewer_csrf})
    ).status_code == 403
    # a viewer with the right token: 403
    answer = viewer.post(f"/api/v1/jobs/{job_id}/replay", headers={"X-CSRF-Token": viewer_csrf})
    assert answer.status_code == 403 and "viewer" in answer.json()["detail"]
    # no changing call of the API goes through for a viewer, token or not
    spec = admin.get("/api/v1/openapi.json").json()
    changing = [
        (method, template)
        for template, operations in spec["paths"].items()
        for method in operations
        if method != "get" and template != "/api/v1/session"
    ]
    assert len(changing) >= 10
    for method, template in changing:
        path = template.replace("{job_id}", str(job_id)).replace("{name}", "pacs")
        answer = viewer.request(
            method.upper(), path, headers={"X-CSRF-Token": viewer_csrf}, json={"text": ""}
        )
        assert answer.status_code == 403, (method, path, answer.status_code)
    # none of the refused calls reached the admin layer: no admin action was audited
    assert admin.get("/api/v1/audit", params={"event": "admin-action"}).json() == []
    # the admin with the token reaches the action: a round cannot be retried (409),
    # and the refusal is audited once, with its actor
    answer = admin.post(f"/api/v1/jobs/{job_id}/retry", headers={"X-CSRF-Token": admin_csrf})
    assert answer.status_code == 409, answer.text
    rows = admin.get("/api/v1/audit", params={"event": "admin-action"}).json()
    assert [(r["actor"], r["action"], r["target"], r["outcome"]) for r in rows] == [
        (ADMIN[0], "retry", f"job {job_id}", "refused")
    ]
    # the page form: no token or a viewer's form is refused, the admin's goes through
    assert admin.post(f"/jobs/{job_id}/retry", data={}).status_code == 403
    assert viewer.post(f"/jobs/{job_id}/retry", data={"csrf_token": viewer_csrf}).status_code == 403
    answer = admin.post(f"/jobs/{job_id}/retry", data={"csrf_token": admin_csrf})
    assert answer.status_code == 303
    # log out needs the token; afterwards the cookie opens nothing
    assert viewer.delete("/api/v1/session").status_code == 403
    assert (
        viewer.delete("/api/v1/session", headers={"X-CSRF-Token": viewer_csrf}).status_code == 200
    )
    assert viewer.get("/api/v1/studies").status_code == 401
    # the session cookie's attributes
    answer = client(port).post("/api/v1/session", json={"name": ADMIN[0], "password": ADMIN[1]})
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_failed_logins_lock_out_and_are_recorded(console_node, tmp_path: Path) -> None:
    node, port, _ = console_node
    http = client(port)
    for _ in range(2):
        answer = http.post("/api/v1/session", json={"name": VIEWER[0], "password": GUESS})
        assert answer.status_code == 401
        assert answer.json()["detail"] == "wrong user name or password"
    # an unknown user gets the same answer
    answer = http.post("/api/v1/session", json={"name": "mallory", "password": GUESS})
    assert answer.json()["detail"] == "wrong user name or password"
    # the third failure in a row (console.max_failed_logins: 3) locks the viewer out...
    answer = http.post("/api/v1/session", json={"name": VIEWER[0], "password": GUESS})
    assert answer.status_code == 401 and "too many" in answer.json()["detail"]
    # ...the right password included
    answer = http.post("/api/v1/session", json={"name": VIEWER[0], "password": VIEWER[1]})
    assert answer.status_code == 401 and "too many" in answer.json()["detail"]
    # the login form too, and its own CSRF token is needed
    form = http.get("/login")
    token = form.cookies["dicomnode_login"]
    answer = http.post("/login", data={"name": ADMIN[0], "password": ADMIN[1], "csrf_token": ""})
    assert answer.status_code == 403
    answer = http.post(
        "/login",
        data={
            "name": ADMIN[0],
            "password": ADMIN[1],
            "csrf_token": token,
            "next": "//evil.example/",
        },
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    # every attempt is in the record, newest first
    record = http.get("/api/v1/audit", params={"event": "login"}).json()
    assert [(r["actor"], r["outcome"], r["detail"].get("reason")) for r in record] == [
        (ADMIN[0], "success", None),
        (VIEWER[0], "failure", "locked out"),
        (VIEWER[0], "failure", "locked out"),
        ("mallory", "failure", "wrong user name or password"),
        (VIEWER[0], "failure", "wrong user name or password"),
        (VIEWER[0], "failure", "wrong user name or password"),
    ]
    assert GUESS not in str(record)  # the password tried is not recorded
    assert all(r["address"] == "127.0.0.1" for r in record)
    # the CLI shows the lockout
    listed = users(node.config_path, "list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()[2:]] == ["alice", "victor"]
    assert "until" in listed.stdout.splitlines()[3]


def test_users_cli_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    config, _ = console_config(tmp_path)
    path = write_config(tmp_path / "node.yaml", config)
    short = users(path, "add", "bob", "--password-stdin", password="short")
    assert short.returncode == 1 and "password: at least 12 characters" in short.stderr
    bad = users(path, "add", "bob smith", "--password-stdin", password="long enough pass")
    assert bad.returncode == 1 and "name:" in bad.stderr
    add_user(path, "bob", "long enough pass", "viewer")
    again = users(path, "add", "bob", "--password-stdin", password="long enough pass")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert users(path, "remove", "bob").returncode == 0
    missing = users(path, "remove", "bob")
    assert missing.returncode == 1 and "no user 'bob'" in missing.stderr


def test_the_console_refuses_to_listen_beyond_loopback_without_a_user(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    config, _ = console_config(tmp_path, console={"host": "0.0.0.0"})
    node = node_process(config, wait=False)
    assert node.proc is not None
    assert node.proc.wait(timeout=60) != 0
    assert "without a user" in node.log()
    assert "dicomnode users add NAME --role admin" in node.log()
