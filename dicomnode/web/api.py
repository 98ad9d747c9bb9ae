"""The REST API under ``/api/v1``: JSON in and out, a session cookie, and the
session's CSRF token in ``X-CSRF-Token`` on every changing call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from dicomnode.auth import Session
from dicomnode.errors import JobStoreError, LoginError, NotFoundError, ResultError
from dicomnode.jobs import JobState
from dicomnode.preview import render_job_preview
from dicomnode.web.context import (
    CSRF_HEADER,
    SESSION_COOKIE,
    ConsoleContext,
    check_admin,
    check_csrf,
)
from dicomnode.web.models import (
    ActionResult,
    Dashboard,
    DeliveryOut,
    JobOut,
    LoginRecord,
    LoginRequest,
    Problem,
    SessionInfo,
    StudyDetail,
    StudySummary,
)
from dicomnode.web.views import (
    dashboard,
    failing_deliveries,
    job_out,
    study_detail,
    study_summaries,
)

__all__ = ["api_router", "client_address", "set_session_cookie"]

#: Answers every authenticated call documents.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No session: log in first."},
}
#: Answers every changing call documents.
CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    403: {"model": Problem, "description": "Wrong CSRF token, or a viewer's session."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "Unknown."}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "Not in a state that allows it."}
}


def context(request: Request) -> ConsoleContext:
    """The console's context."""
    found: ConsoleContext = request.app.state.console
    return found


Context = Annotated[ConsoleContext, Depends(context)]


def client_address(request: Request) -> str:
    """The peer's address (no proxy header is trusted)."""
    return request.client.host if request.client else "-"


def session(request: Request, ctx: Context) -> Session:
    """The request's session; 401 without one."""
    found = ctx.session(request)
    if found is None:
        raise HTTPException(status_code=401, detail="log in first")
    return found


def admin_session(
    found: Annotated[Session, Depends(session)],
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> Session:
    """An admin's session whose call carries its CSRF token; 403 otherwise."""
    check_csrf(found, csrf)
    check_admin(found)
    return found


Viewer = Annotated[Session, Depends(session)]
Admin = Annotated[Session, Depends(admin_session)]


def set_session_cookie(response: Response, ctx: ConsoleContext, token: str, max_age: float) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Secure when configured."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(max_age),
        httponly=True,
        samesite="strict",
        secure=ctx.settings().console.secure_cookies,
        path="/",
    )


api_router = APIRouter(prefix="/api/v1")


@api_router.post(
    "/session",
    response_model=SessionInfo,
    tags=["session"],
    responses={401: {"model": Problem, "description": "Wrong name or password, or locked."}},
)
def login(body: LoginRequest, request: Request, response: Response, ctx: Context) -> SessionInfo:
    """Log in: sets the session cookie and returns the CSRF token."""
    address = client_address(request)
    try:
        user = ctx.users.authenticate(body.name, body.password)
    except LoginError as exc:
        ctx.audit_login(body.name, "locked" if exc.locked else "failed", address)
        raise HTTPException(status_code=401, detail=str(exc)) from exc
    ctx.audit_login(user.name, "ok", address)
    token, opened = ctx.users.open_session(user, ctx.session_seconds)
    set_session_cookie(response, ctx, token, ctx.session_seconds)
    return SessionInfo(
        user=user.name,
        role=str(user.role),
        csrf_token=opened.csrf_token,
        expires_at=opened.expires_at,
    )


@api_router.get("/session", response_model=SessionInfo, tags=["session"], responses=AUTH_RESPONSES)
def whoami(found: Viewer) -> SessionInfo:
    """The session: user, role and CSRF token."""
    return SessionInfo(
        user=found.user.name,
        role=str(found.user.role),
        csrf_token=found.csrf_token,
        expires_at=found.expires_at,
    )


@api_router.delete(
    "/session", response_model=ActionResult, tags=["session"], responses=CHANGE_RESPONSES
)
def logout(
    request: Request,
    response: Response,
    found: Viewer,
    ctx: Context,
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> ActionResult:
    """Log out (any role; the CSRF token is needed)."""
    check_csrf(found, csrf)
    token = request.cookies.get(SESSION_COOKIE, "")
    ctx.users.close_session(token)
    ctx.audit_login(found.user.name, "logout", client_address(request))
    response.delete_cookie(SESSION_COOKIE, path="/")
    return ActionResult(ok=True, message="logged out")


@api_router.get("/dashboard", response_model=Dashboard, tags=["node"], responses=AUTH_RESPONSES)
def get_dashboard(_: Viewer, ctx: Context) -> Dashboard:
    """The node at a glance."""
    try:
        free: int | None = ctx.free_bytes()
    except OSError:
        free = None
    return dashboard(ctx.store, free, ctx.settings().storage.min_free_mb * 1024 * 1024)


@api_router.get(
    "/studies", response_model=list[StudySummary], tags=["studies"], responses=AUTH_RESPONSES
)
def list_studies(
    _: Viewer,
    ctx: Context,
    uid: Annotated[str | None, Query(max_length=64, description="UID prefix")] = None,
    state: Annotated[JobState | None, Query(description="latest round's state")] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[StudySummary]:
    """Studies, newest first."""
    return study_summaries(
        ctx.store,
        uid=uid,
        state=None if state is None else str(state),
        modality=modality,
        limit=limit,
    )


@api_router.get(
    "/studies/{study_uid}",
    response_model=StudyDetail,
    tags=["studies"],
    responses={**AUTH_RESPONSES, **NOT_FOUND},
)
def get_study(study_uid: str, _: Viewer, ctx: Context) -> StudyDetail:
    """A study with every round, run, state change and delivery."""
    found = study_detail(ctx.store, study_uid)
    if found is None:
        raise HTTPException(status_code=404, detail="no such study")
    return found


def _job(ctx: ConsoleContext, job_id: int) -> JobOut:
    try:
        return job_out(ctx.store, ctx.store.get_job(job_id))
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@api_router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    tags=["jobs"],
    responses={**AUTH_RESPONSES, **NOT_FOUND},
)
def get_job(job_id: int, _: Viewer, ctx: Context) -> JobOut:
    """A round or a run, with its state changes and deliveries."""
    return _job(ctx, job_id)


@api_router.get(
    "/jobs/{job_id}/preview.png",
    tags=["jobs"],
    response_class=Response,
    responses={
        **AUTH_RESPONSES,
        **NOT_FOUND,
        200: {"content": {"image/png": {}}, "description": "The preview."},
    },
)
def get_preview(job_id: int, _: Viewer, ctx: Context) -> Response:
    """The result's key slice with its segments (or heat) over the source."""
    try:
        png = render_job_preview(ctx.store, job_id)
    except (NotFoundError, ResultError) as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@api_router.get(
    "/jobs/{job_id}/deliveries/{delivery_id}/file",
    tags=["jobs"],
    response_class=FileResponse,
    responses={
        **AUTH_RESPONSES,
        **NOT_FOUND,
        200: {"content": {"application/dicom": {}}, "description": "The object."},
    },
)
def download(job_id: int, delivery_id: int, _: Viewer, ctx: Context) -> FileResponse:
    """A result object as the node wrote it."""
    try:
        items = ctx.store.outbox(job_id)
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    item = next((i for i in items if i.id == delivery_id and i.kind == "dicom" and i.path), None)
    if item is None or not Path(item.path).is_file():
        raise HTTPException(status_code=404, detail="no such object (or it was purged)")
    return FileResponse(
        item.path,
        media_type="application/dicom",
        filename=f"{item.sop_instance_uid or item.id}.dcm",
    )


@api_router.get(
    "/deliveries/failing",
    response_model=list[DeliveryOut],
    tags=["deliveries"],
    responses=AUTH_RESPONSES,
)
def get_failing(_: Viewer, ctx: Context) -> list[DeliveryOut]:
    """Deliveries that failed at least once and are not delivered."""
    return failing_deliveries(ctx.store)


def _act(ctx: ConsoleContext, job_id: int, verb: str) -> ActionResult:
    try:
        job = ctx.store.retry(job_id) if verb == "retry" else ctx.store.replay(job_id)
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except JobStoreError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return ActionResult(
        ok=True, message=f"job {job.id}: {verb} queued ({job.state})", job_ids=[job.id]
    )


@api_router.post(
    "/jobs/{job_id}/retry",
    response_model=ActionResult,
    tags=["jobs"],
    responses={**CHANGE_RESPONSES, **NOT_FOUND, **CONFLICT},
)
def retry(job_id: int, _: Admin, ctx: Context) -> ActionResult:
    """Run a DEAD or FAILED_RETRYABLE run again (only its failed deliveries, if
    it failed delivering)."""
    return _act(ctx, job_id, "retry")


@api_router.post(
    "/jobs/{job_id}/replay",
    response_model=ActionResult,
    tags=["jobs"],
    responses={**CHANGE_RESPONSES, **NOT_FOUND, **CONFLICT},
)
def replay(job_id: int, _: Admin, ctx: Context) -> ActionResult:
    """Deliver a finished run's results again."""
    return _act(ctx, job_id, "replay")


@api_router.get(
    "/audit/logins", response_model=list[LoginRecord], tags=["audit"], responses=AUTH_RESPONSES
)
def get_logins(
    _: Viewer, ctx: Context, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[LoginRecord]:
    """The latest logins and failed logins, newest first."""
    return [
        LoginRecord(at=r.at, user=r.user_name, outcome=r.outcome, address=r.address)
        for r in ctx.users.logins(limit)
    ]


@api_router.get("/config", tags=["node"], responses=AUTH_RESPONSES)
def get_config(_: Viewer, ctx: Context) -> dict[str, Any]:
    """The configuration in force, as loaded (defaults filled in)."""
    loaded: dict[str, Any] = ctx.settings().model_dump(mode="json")
    return loaded
