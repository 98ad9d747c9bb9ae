"""The console's server-rendered pages. They work without JavaScript; every
form POSTs the session's CSRF token."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from dicomnode.auth import Role, Session
from dicomnode.errors import JobStoreError, LoginError, NotFoundError
from dicomnode.jobs import JobState
from dicomnode.web.api import Context, client_address, set_session_cookie
from dicomnode.web.context import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ConsoleContext,
    LoginRequired,
    check_admin,
    check_csrf,
)
from dicomnode.web.views import dashboard, failing_deliveries, study_detail, study_summaries

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
        ctx.audit_login(name, "locked" if exc.locked else "failed", address)
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
    ctx.audit_login(user.name, "ok", address)
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
    ctx.audit_login(found.user.name, "logout", client_address(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _free(ctx: ConsoleContext) -> int | None:
    try:
        return ctx.free_bytes()
    except OSError:
        return None


@page_router.get("/", response_class=HTMLResponse)
def dashboard_page(request: Request, found: Viewer, ctx: Context) -> HTMLResponse:
    """The node at a glance."""
    figures = dashboard(ctx.store, _free(ctx), ctx.settings().storage.min_free_mb * 1024 * 1024)
    return render(
        request,
        "dashboard.html",
        found,
        figures=figures,
        health=ctx.readiness(),
        recent=study_summaries(ctx.store, limit=10),
    )


@page_router.get("/studies", response_class=HTMLResponse)
def studies_page(
    request: Request,
    found: Viewer,
    ctx: Context,
    uid: Annotated[str, Query(max_length=64)] = "",
    state: Annotated[str, Query(max_length=32)] = "",
    modality: Annotated[str, Query(max_length=16)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HTMLResponse:
    """Studies, newest first, with filters."""
    rows = study_summaries(
        ctx.store, uid=uid or None, state=state or None, modality=modality or None, limit=limit
    )
    return render(
        request,
        "studies.html",
        found,
        studies=rows,
        uid=uid,
        state=state,
        modality=modality,
        states=[s.value for s in JobState],
    )


@page_router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(
    request: Request, study_uid: str, found: Viewer, ctx: Context, message: str = ""
) -> HTMLResponse:
    """A study: its stages with durations, the rule that matched, outputs and preview."""
    detail = study_detail(ctx.store, study_uid)
    if detail is None:
        return render(request, "missing.html", found, status=404, what=f"study {study_uid}")
    return render(request, "study.html", found, detail=detail, message=message)


@page_router.get("/deliveries", response_class=HTMLResponse)
def deliveries_page(
    request: Request, found: Viewer, ctx: Context, message: str = ""
) -> HTMLResponse:
    """Failing deliveries and DEAD runs, with retry and replay."""
    dead = [job for job in ctx.store.jobs(state=JobState.DEAD) if job.kind == "run"]
    return render(
        request,
        "deliveries.html",
        found,
        failing=failing_deliveries(ctx.store),
        dead=dead,
        done=[job for job in ctx.store.jobs(state=JobState.DONE) if job.kind == "run"][:20],
        message=message,
    )


@page_router.post("/jobs/{job_id}/{verb}")
def job_action(
    request: Request,
    job_id: int,
    verb: str,
    found: Viewer,
    ctx: Context,
    csrf_token: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "/deliveries",
) -> Response:
    """Retry or replay a run from a page."""
    check_csrf(found, csrf_token)
    check_admin(found)
    if verb not in ("retry", "replay"):
        raise HTTPException(status_code=404, detail="no such action")
    try:
        job = ctx.store.retry(job_id) if verb == "retry" else ctx.store.replay(job_id)
        message = f"job {job.id}: {verb} queued"
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except JobStoreError as exc:
        message = f"job {job_id}: {exc}"
    target = _safe_next(back)
    separator = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{separator}message={quote(message)}", status_code=303)


@page_router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, found: Viewer, ctx: Context) -> HTMLResponse:
    """The audit trail: logins and failed logins."""
    return render(request, "audit.html", found, logins=ctx.users.logins(200))


@page_router.get("/config", response_class=HTMLResponse)
def config_page(request: Request, found: Viewer, ctx: Context) -> HTMLResponse:
    """The configuration in force, as loaded."""
    import yaml

    text = yaml.safe_dump(ctx.settings().model_dump(mode="json"), sort_keys=False)
    return render(request, "config.html", found, text=text, path=ctx.config_path)


@page_router.get("/pipelines", response_class=HTMLResponse)
def pipelines_page(request: Request, found: Viewer, ctx: Context) -> HTMLResponse:
    """The routed pipelines: version, models and their SHA-256, device, warm or not."""
    return render(request, "pipelines.html", found, pipelines=ctx.pipelines())


@page_router.get("/destinations", response_class=HTMLResponse)
def destinations_page(
    request: Request, found: Viewer, ctx: Context, message: str = ""
) -> HTMLResponse:
    """The destinations as configured."""
    destinations = {
        name: destination.model_dump(mode="json")
        for name, destination in ctx.settings().destinations.items()
    }
    return render(request, "destinations.html", found, destinations=destinations, message=message)
