"""The REST API under ``/api/v1``: JSON in and out, a session cookie, and the
session's CSRF token in ``X-CSRF-Token`` on every changing call. Every read
and action goes through the admin layer (:class:`~dicomnode.admin.Admin`),
with the session's user as the actor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import yaml
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from dicomnode.admin import (
    ActionResult,
    Admin,
    AuditFilter,
    AuditRow,
    DeliveryRow,
    DestinationRow,
    DestinationTest,
    DryRunRow,
    ReloadResult,
    RunDetail,
    StudyDetail,
    StudyFilter,
    StudySummary,
)
from dicomnode.auth import Session
from dicomnode.config import parse_config
from dicomnode.errors import (
    ConfigError,
    DicomNodeError,
    JobStoreError,
    LoginError,
    NotFoundError,
)
from dicomnode.jobs import JobState
from dicomnode.web.context import (
    CSRF_HEADER,
    SESSION_COOKIE,
    ConsoleContext,
    check_admin,
    check_csrf,
)
from dicomnode.web.models import (
    Dashboard,
    Done,
    DryRunRequest,
    LoginRequest,
    Problem,
    RulesCheck,
    RulesText,
    SessionInfo,
)
from dicomnode.web.views import dashboard, redacted, routing_section, with_routing_section

__all__ = [
    "act",
    "api_router",
    "check_rules",
    "client_address",
    "config_text",
    "set_session_cookie",
]

#: A job's or a delivery's id: a positive SQLite integer.
RowId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]

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
INVALID: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Invalid; each problem names its field path."}
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
AdminSession = Annotated[Session, Depends(admin_session)]


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


# -- what the API and the pages share ------------------------------------------


def act(admin: Admin, verb: str, job_id: int, actor: str) -> ActionResult:
    """Retry, replay, hold, release or discard a job as ``actor`` (audited by
    the admin layer); 404 for an unknown job, 409 when its state forbids it."""
    actions = {
        "retry": admin.retry,
        "replay": admin.replay,
        "hold": admin.hold,
        "release": admin.release,
        "discard": admin.discard,
    }
    if verb not in actions:
        raise HTTPException(status_code=404, detail=f"no action {verb!r}")
    try:
        return actions[verb](job_id, actor)
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except JobStoreError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc


def config_text(admin: Admin) -> str:
    """The configuration file's text."""
    if admin.config_path is None:
        raise HTTPException(status_code=409, detail="the node was started without a file")
    return admin.config_path.read_text(encoding="utf-8")


def check_rules(admin: Admin, section: str) -> tuple[str, RulesCheck]:
    """The file's text with ``section`` as its ``routing:`` section, and
    whether it validates as ``serve`` would (problems name their field paths)."""
    try:
        parsed = yaml.safe_load(section)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        return "", RulesCheck(ok=False, problems=[f"routing: not valid YAML: {exc}"], warnings=[])
    if not isinstance(parsed, dict) or set(parsed) != {"routing"}:
        return "", RulesCheck(
            ok=False,
            problems=["(top level): the text must be the routing: section and nothing else"],
            warnings=[],
        )
    text = with_routing_section(config_text(admin), section)
    checked = admin.validate_config(text)
    return text, RulesCheck(ok=checked.ok, problems=checked.problems, warnings=checked.warnings)


def dry_run_rules(admin: Admin, section: str, last: int) -> tuple[RulesCheck, list[DryRunRow]]:
    """Edited rules tried on the last ``last`` received studies (nothing is
    routed): for each, the rules that matched then and would match now."""
    text, checked = check_rules(admin, section)
    if not checked.ok:
        return checked, []
    try:
        routing = parse_config(yaml.safe_load(text)).routing
    except ConfigError as exc:
        return RulesCheck(ok=False, problems=exc.problems or [str(exc)], warnings=[]), []
    return checked, admin.dry_run(routing, last=last)


# -- session --------------------------------------------------------------------

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
        ctx.audit_login(body.name, False, address, "locked out" if exc.locked else str(exc))
        raise HTTPException(status_code=401, detail=str(exc)) from exc
    ctx.audit_login(user.name, True, address)
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


@api_router.delete("/session", response_model=Done, tags=["session"], responses=CHANGE_RESPONSES)
def logout(
    request: Request,
    response: Response,
    found: Viewer,
    ctx: Context,
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> Done:
    """Log out (any role; the CSRF token is needed)."""
    check_csrf(found, csrf)
    ctx.users.close_session(request.cookies.get(SESSION_COOKIE, ""))
    ctx.audit_logout(found.user.name, client_address(request))
    response.delete_cookie(SESSION_COOKIE, path="/")
    return Done(ok=True, message="logged out")


# -- reading --------------------------------------------------------------------


@api_router.get("/dashboard", response_model=Dashboard, tags=["node"], responses=AUTH_RESPONSES)
def get_dashboard(_: Viewer, ctx: Context) -> Dashboard:
    """The node at a glance."""
    try:
        free: int | None = ctx.free_bytes()
    except OSError:
        free = None
    return dashboard(ctx.admin(), free, ctx.settings().storage.min_free_mb * 1024 * 1024)


@api_router.get(
    "/studies", response_model=list[StudySummary], tags=["studies"], responses=AUTH_RESPONSES
)
def list_studies(
    _: Viewer,
    ctx: Context,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    accession_number: Annotated[str | None, Query(max_length=64)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[JobState | None, Query(description="a job of the study is in it")] = None,
    calling_ae: Annotated[str | None, Query(max_length=16)] = None,
    rule: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[float | None, Query(description="received at or after (epoch s)")] = None,
    until: Annotated[float | None, Query(description="received before (epoch s)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[StudySummary]:
    """Studies, most recently received first, filtered."""
    return ctx.admin().studies(
        StudyFilter(
            study_instance_uid=study_uid or None,
            accession_number=accession_number or None,
            patient_id=patient_id or None,
            state=None if state is None else str(state),
            calling_ae=calling_ae or None,
            rule=rule or None,
            since=since,
            until=until,
            limit=limit,
        )
    )


@api_router.get(
    "/studies/{study_uid}",
    response_model=StudyDetail,
    tags=["studies"],
    responses={**AUTH_RESPONSES, **NOT_FOUND},
)
def get_study(study_uid: str, _: Viewer, ctx: Context) -> StudyDetail:
    """A study with every round, run, state change and delivery."""
    try:
        return ctx.admin().study(study_uid)
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@api_router.get(
    "/jobs/{job_id}",
    response_model=RunDetail,
    tags=["jobs"],
    responses={**AUTH_RESPONSES, **NOT_FOUND},
)
def get_job(job_id: RowId, _: Viewer, ctx: Context) -> RunDetail:
    """A round or a run, with its state changes and deliveries."""
    try:
        return ctx.admin().job(job_id)
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


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
def get_preview(job_id: RowId, _: Viewer, ctx: Context) -> Response:
    """The result's key slice with its segments (or heat) over the source."""
    try:
        png = ctx.admin().preview(job_id=job_id)
    except DicomNodeError as exc:
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
def download(job_id: RowId, delivery_id: RowId, _: Viewer, ctx: Context) -> FileResponse:
    """A result object as the node wrote it."""
    items = ctx.admin().store.outbox(job_id)
    item = next((i for i in items if i.id == delivery_id and i.kind == "dicom" and i.path), None)
    if item is None or not Path(item.path).is_file():
        raise HTTPException(status_code=404, detail="no such object (or it was purged)")
    return FileResponse(
        item.path,
        media_type="application/dicom",
        filename=f"{item.sop_instance_uid or item.id}.dcm",
    )


@api_router.get(
    "/deliveries",
    response_model=list[DeliveryRow],
    tags=["deliveries"],
    responses=AUTH_RESPONSES,
)
def list_deliveries(
    _: Viewer,
    ctx: Context,
    state: Annotated[str | None, Query(pattern="^(PENDING|DELIVERED|DEAD)$")] = None,
    destination: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryRow]:
    """Deliveries, newest first (``state=DEAD``: the dead letters)."""
    return ctx.admin().deliveries(state=state, destination=destination, limit=limit)


@api_router.get("/audit", response_model=list[AuditRow], tags=["audit"], responses=AUTH_RESPONSES)
def list_audit(
    _: Viewer,
    ctx: Context,
    event: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditRow]:
    """The audit trail, newest first."""
    return ctx.admin().audit(
        AuditFilter(event=event, actor=actor, study_instance_uid=study_uid, limit=limit)
    )


@api_router.get("/config", tags=["config"], responses=AUTH_RESPONSES)
def get_config(_: Viewer, ctx: Context) -> dict[str, Any]:
    """The configuration in force, as loaded (defaults filled in; the user,
    password and query of URLs hidden)."""
    return cast(dict[str, Any], redacted(ctx.admin().configuration()))


@api_router.get(
    "/rules", response_model=RulesText, tags=["config"], responses={**AUTH_RESPONSES, **CONFLICT}
)
def get_rules(_: Viewer, ctx: Context) -> RulesText:
    """The ``routing:`` section of the configuration file, comments kept."""
    return RulesText(text=routing_section(config_text(ctx.admin())))


# -- changing -------------------------------------------------------------------


def _job_action(verb: str, summary: str) -> None:
    def handler(job_id: RowId, found: AdminSession, ctx: Context) -> ActionResult:
        return act(ctx.admin(), verb, job_id, found.user.name)

    handler.__doc__ = summary
    api_router.add_api_route(
        f"/jobs/{{job_id}}/{verb}",
        handler,
        methods=["POST"],
        response_model=ActionResult,
        tags=["jobs"],
        name=verb,
        responses={**CHANGE_RESPONSES, **NOT_FOUND, **CONFLICT},
    )


_job_action("retry", "Run a DEAD or FAILED_RETRYABLE run again (its failed deliveries only).")
_job_action("replay", "Deliver a DONE or DEAD run's results again, to every destination.")
_job_action("hold", "Hold a job: not routed, run or delivered until released.")
_job_action("release", "Release a held job.")
_job_action("discard", "Give up a DEAD or held job (DISCARDED; retention purges it later).")


@api_router.get(
    "/destinations",
    response_model=list[DestinationRow],
    tags=["destinations"],
    responses=AUTH_RESPONSES,
)
def list_destinations(_: Viewer, ctx: Context) -> list[DestinationRow]:
    """The configured destinations, with the rules that use each."""
    return ctx.admin().destinations()


@api_router.post(
    "/destinations/{name}/test",
    response_model=DestinationTest,
    tags=["destinations"],
    responses={**CHANGE_RESPONSES, **NOT_FOUND},
)
def test_destination(name: str, found: AdminSession, ctx: Context) -> DestinationTest:
    """Whether a destination answers now: C-ECHO (DICOM), a connection (HL7),
    a writable folder."""
    try:
        return ctx.admin().test_destination(name, found.user.name)
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@api_router.post(
    "/rules/check",
    response_model=RulesCheck,
    tags=["config"],
    responses={**CHANGE_RESPONSES, **CONFLICT},
)
def post_rules_check(body: RulesText, _: AdminSession, ctx: Context) -> RulesCheck:
    """Validate an edited ``routing:`` section with the rest of the file."""
    return check_rules(ctx.admin(), body.text)[1]


@api_router.post(
    "/rules/dry-run",
    response_model=list[DryRunRow],
    tags=["config"],
    responses={**CHANGE_RESPONSES, **CONFLICT, **INVALID},
)
def post_dry_run(body: DryRunRequest, _: AdminSession, ctx: Context) -> list[DryRunRow]:
    """Try edited rules on the last received studies; nothing is routed."""
    checked, rows = dry_run_rules(ctx.admin(), body.text, body.last)
    if not checked.ok:
        raise HTTPException(status_code=400, detail="; ".join(checked.problems))
    return rows


@api_router.put(
    "/rules",
    response_model=Done,
    tags=["config"],
    responses={**CHANGE_RESPONSES, **CONFLICT, **INVALID},
)
def put_rules(body: RulesText, found: AdminSession, ctx: Context) -> Done:
    """Save an edited ``routing:`` section into the file (the old file kept
    as a backup beside it); it applies after a reload."""
    admin = ctx.admin()
    text, checked = check_rules(admin, body.text)
    if not text:  # not a routing: section; nothing to save
        raise HTTPException(status_code=400, detail="; ".join(checked.problems))
    try:  # the admin layer validates again and audits a refused save too
        saved = admin.save_config(text, found.user.name)
    except ConfigError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    return Done(ok=True, message=f"saved {saved.path} (backup {saved.backup_path})")


@api_router.post(
    "/config/reload",
    response_model=ReloadResult,
    tags=["config"],
    responses={**CHANGE_RESPONSES, **CONFLICT},
)
def post_reload(found: AdminSession, ctx: Context) -> ReloadResult:
    """Have the node re-read its configuration file (an invalid one is refused
    and the configuration in force stays)."""
    return ctx.admin().reload(found.user.name)
