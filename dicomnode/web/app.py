"""The console's FastAPI app: the REST API, the pages, health and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from dicomnode import __version__
from dicomnode.web.api import api_router
from dicomnode.web.context import ConsoleContext, LoginRequired
from dicomnode.web.pages import page_router, render

__all__ = ["create_app"]

#: Headers on every answer: no framing, no sniffing, scripts only from this site.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(ctx: ConsoleContext) -> FastAPI:
    """The app over ``ctx``.

    ``/healthz``, ``/readyz`` and ``/metrics`` answer without a session (they
    carry no patient data); every other page and call needs one.
    """
    app = FastAPI(
        title="dicomnode",
        version=__version__,
        description=(
            "The node's REST API. Log in with POST /api/v1/session (a session cookie); send "
            "the returned csrf_token in X-CSRF-Token on every changing call."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.console = ctx
    app.include_router(api_router)
    app.include_router(page_router)
    app.mount(
        "/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static"
    )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        from dicomnode.health import liveness

        health = liveness()
        return Response(health.body(), health.http_status, media_type="application/json")

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        health = ctx.readiness()
        return Response(health.body(), health.http_status, media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        body, content_type = ctx.exposition(request.headers.get("accept"))
        return Response(body, 200, media_type=content_type)

    @app.exception_handler(LoginRequired)
    def to_login(request: Request, exc: LoginRequired) -> Response:
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(exc.path, safe='/')}", status_code=303)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        session = ctx.session(request)
        return render(
            request, "error.html", session, status=exc.status_code, detail=str(exc.detail)
        )

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app
