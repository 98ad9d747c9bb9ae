"""The console's server-rendered pages. They work without JavaScript; every
form POSTs the session's CSRF token."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import yaml
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from dicomnode.admin import AuditFilter, StudyFilter
from dicomnode.auth import Role, Session
from dicomnode.errors import ConfigError, DicomNodeError, LoginError, NotFoundError
from dicomnode.jobs import AuditEvent, JobState
from dicomnode.web.api import (
    Context,
    RowId,
    act,
    check_rules,
    client_address,
    config_text,
    dry_run_rules,
    set_session_cookie,
)
from dicomnode.web.context import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ConsoleContext,
    LoginRequired,
    check_admin,
    check_csrf,
)
from dicomnode.web.views import PREVIEW_STATES, dashboard, redacted, routing_section

__all__ = ["page_router", "templates"]

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _short(uid: str | None) -> str:
    if not uid:
        return "-"
    return uid if len(uid) <= 24 else f"{uid[:10]}…{uid[-10:]}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024 / 1024:,.0f} MiB"


templates.env.filters["when"] = _when
templates.env.filters["duration"] = _duration
templates.env.filters["short"] = _short
templates.env.filters["mib"] = _mib


def page_session(request: Request, ctx: Context) -> Session:
    """The page's session; the login page without one."""
    found = ctx.session(request)
    if found is None:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        raise LoginRequired(target)
    return found


Viewer = Annotated[Session, Depends(page_session)]


def render(
    request: Request, name: str, session: Session | None, status: int = 200, **values: Any
) -> HTMLResponse:
    """A page, with the session (user, role, CSRF token) in reach of its forms."""
    return templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "is_admin": session is not None and session.user.role is Role.ADMIN,
            **values,
        },
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _safe_next(target: str) -> str:
    # only a path of this site: no scheme, no host, no protocol-relative URL
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


page_router = APIRouter(include_in_schema=False)


@page_router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", error: str | None = None) -> HTMLResponse:
    """The login form, with a CSRF token of its own (cookie and field)."""
    token = secrets.token_urlsafe(32)
    response = render(
        request, "login.html", None, next=_safe_next(next), login_token=token, error=error
    )
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login")
    return response


@page_router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    ctx: Context,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Check the password; on success a session cookie and the page asked for."""
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, csrf_token):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
    address = client_address(request)
    try:
        user = ctx.users.authenticate(name, password)
    except LoginError as exc:
        ctx.audit_login(name, False, address, "locked out" if exc.locked else str(exc))
        token = secrets.token_urlsafe(32)
        response = render(
            request,
            "login.html",
            None,
            status=401,
            next=_safe_next(next),
            login_token=token,
            error=str(exc),
        )
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login")
        return response
    ctx.audit_login(user.name, True, address)
    token, _ = ctx.users.open_session(user, ctx.session_seconds)
    redirect = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(redirect, ctx, token, ctx.session_seconds)
    redirect.delete_cookie(LOGIN_COOKIE, path="/login")
    return redirect


@page_router.post("/logout")
def logout_submit(
    request: Request, found: Viewer, ctx: Context, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """End the session."""
    check_csrf(found, csrf_token)
    ctx.users.close_session(request.cookies.get(SESSION_COOKIE, ""))
    ctx.audit_logout(found.user.name, client_address(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _free(ctx: ConsoleContext) -> int | None:
    try:
        return ctx.free_bytes()
    except OSError:
        return None


def _back(target: str, message: str) -> RedirectResponse:
    target = _safe_next(target)
    separator = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{separator}message={quote(message)}", status_code=303)


@page_router.get("/", response_class=HTMLResponse)
def dashboard_page(request: Request, found: Viewer, ctx: Context) -> HTMLResponse:
    """The node at a glance."""
    admin = ctx.admin()
    figures = dashboard(admin, _free(ctx), ctx.settings().storage.min_free_mb * 1024 * 1024)
    return render(
        request,
        "dashboard.html",
        found,
        figures=figures,
        health=ctx.readiness(),
        studies=admin.studies(StudyFilter(limit=10)),
    )


@page_router.get("/studies", response_class=HTMLResponse)
def studies_page(
    request: Request,
    found: Viewer,
    ctx: Context,
    study_uid: Annotated[str, Query(max_length=64)] = "",
    accession_number: Annotated[str, Query(max_length=64)] = "",
    patient_id: Annotated[str, Query(max_length=64)] = "",
    state: Annotated[str, Query(max_length=32)] = "",
    calling_ae: Annotated[str, Query(max_length=16)] = "",
    rule: Annotated[str, Query(max_length=128)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HTMLResponse:
    """Studies, newest first, with filters."""
    query = StudyFilter(
        study_instance_uid=study_uid.strip() or None,
        accession_number=accession_number.strip() or None,
        patient_id=patient_id.strip() or None,
        state=state if state in {s.value for s in JobState} else None,
        calling_ae=calling_ae.strip() or None,
        rule=rule.strip() or None,
        limit=limit,
    )
    return render(
        request,
        "studies.html",
        found,
        studies=ctx.admin().studies(query),
        query=query,
        states=[s.value for s in JobState],
    )


@page_router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(
    request: Request, study_uid: str, found: Viewer, ctx: Context, message: str = ""
) -> HTMLResponse:
    """A study: its stages with durations, the rule that matched, outputs and preview."""
    admin = ctx.admin()
    try:
        detail = admin.study(study_uid)
    except NotFoundError:
        return render(request, "missing.html", found, status=404, what=f"study {study_uid}")
    try:
        why = admin.explain(study_uid).text
    except DicomNodeError as exc:  # purged, or not readable: say so instead
        why = str(exc)
    return render(
        request,
        "study.html",
        found,
        detail=detail,
        message=message,
        preview=PREVIEW_STATES,
        why=why,
    )


@page_router.get("/deliveries", response_class=HTMLResponse)
def deliveries_page(
    request: Request, found: Viewer, ctx: Context, message: str = ""
) -> HTMLResponse:
    """Failing deliveries and dead letters, with retry, replay and discard."""
    admin = ctx.admin()
    rows = admin.deliveries(limit=500)
    return render(
        request,
        "deliveries.html",
        found,
        failing=[r for r in rows if r.state == "PENDING" and r.attempts > 0],
        dead=[r for r in rows if r.state == "DEAD"],
        delivered=[r for r in rows if r.state == "DELIVERED"][:20],
        message=message,
    )


@page_router.post("/jobs/{job_id}/{verb}")
def job_action(
    job_id: RowId,
    verb: str,
    found: Viewer,
    ctx: Context,
    csrf_token: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "/deliveries",
) -> Response:
    """Retry, replay, hold, release or discard a job from a page."""
    check_csrf(found, csrf_token)
    check_admin(found)
    try:
        done = act(ctx.admin(), verb, job_id, found.user.name)
        message = f"job {job_id}: {verb}: {done.message}"
    except HTTPException as exc:
        if exc.status_code != 409:
            raise
        message = f"job {job_id}: {verb} refused: {exc.detail}"
    return _back(back, message)


@page_router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    found: Viewer,
    ctx: Context,
    event: Annotated[str, Query(max_length=64)] = "",
    actor: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    """The audit trail, newest first."""
    rows = ctx.admin().audit(AuditFilter(event=event or None, actor=actor or None, limit=300))
    return render(
        request,
        "audit.html",
        found,
        rows=rows,
        event=event,
        actor=actor,
        events=[e.value for e in AuditEvent],
    )


@page_router.get("/config", response_class=HTMLResponse)
def config_page(request: Request, found: Viewer, ctx: Context) -> HTMLResponse:
    """The configuration in force, as loaded."""
    admin = ctx.admin()
    text = yaml.safe_dump(redacted(admin.configuration()), sort_keys=False)
    return render(request, "config.html", found, text=text, path=admin.config_path)


@page_router.get("/pipelines", response_class=HTMLResponse)
def pipelines_page(request: Request, found: Viewer, ctx: Context) -> HTMLResponse:
    """The routed pipelines: version, models and their SHA-256, device, warm or not."""
    return render(request, "pipelines.html", found, pipelines=ctx.pipelines())


@page_router.get("/destinations", response_class=HTMLResponse)
def destinations_page(
    request: Request, found: Viewer, ctx: Context, message: str = ""
) -> HTMLResponse:
    """The destinations as configured, each with the rules that use it and a
    reachability test."""
    rows = ctx.admin().destinations()
    return render(request, "destinations.html", found, destinations=rows, message=message)


@page_router.post("/destinations/{name}/test")
def destination_test(
    name: str, found: Viewer, ctx: Context, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """Test a destination from the page."""
    check_csrf(found, csrf_token)
    check_admin(found)
    try:
        tested = ctx.admin().test_destination(name, found.user.name)
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    verdict = "reachable" if tested.ok else "NOT reachable"
    return _back("/destinations", f"{name} ({tested.target}): {verdict}: {tested.detail}")


@page_router.get("/rules", response_class=HTMLResponse)
def rules_page(request: Request, found: Viewer, ctx: Context, message: str = "") -> HTMLResponse:
    """The rules as the file has them, for reading and (admins) editing."""
    admin = ctx.admin()
    return render(
        request,
        "rules.html",
        found,
        text=routing_section(config_text(admin)),
        path=admin.config_path,
        message=message,
        checked=None,
        rows=None,
        last=20,
    )


@page_router.post("/rules", response_class=HTMLResponse)
def rules_submit(
    request: Request,
    found: Viewer,
    ctx: Context,
    text: Annotated[str, Form(max_length=200_000)],
    action: Annotated[str, Form(pattern="^(check|dry-run|save|reload)$")],
    csrf_token: Annotated[str, Form()] = "",
    last: Annotated[int, Form(ge=1, le=500)] = 20,
) -> Response:
    """Check, dry-run or save edited rules, or reload the saved file."""
    check_csrf(found, csrf_token)
    check_admin(found)
    admin = ctx.admin()
    actor = found.user.name
    if action == "reload":
        result = admin.reload(actor)
        if result.applied:
            message = f"reloaded: {result.message}"
        else:
            message = "reload refused: " + ("; ".join(result.problems) or result.message)
        return _back("/rules", message)
    rows = None
    if action == "dry-run":
        checked, rows = dry_run_rules(admin, text, last)
    else:
        full, checked = check_rules(admin, text)
        # the admin layer validates again and audits a refused save too
        if action == "save" and full:
            try:
                saved = admin.save_config(full, actor)
            except ConfigError as exc:
                checked = checked.model_copy(
                    update={"ok": False, "problems": exc.problems or [str(exc)]}
                )
            else:
                return _back(
                    "/rules",
                    f"saved {saved.path} (the old file is {saved.backup_path}); reload to apply",
                )
    return render(
        request,
        "rules.html",
        found,
        status=200 if checked.ok else 400,
        text=text,
        path=admin.config_path,
        message="",
        checked=checked,
        rows=rows,
        last=last,
        action=action,
    )
