"""OHIF, the web viewer a radiologist uses, over Orthanc's DICOMweb, in headless Chromium.

`make ohif` unpacks the prebuilt viewer of the npm package ``@ohif/app`` (version
pinned in the Makefile) into ``.cache/ohif/``; :func:`ohif_dist` finds it, installing
it through the same target when needed. :class:`ViewerServer` serves that folder on
loopback with OHIF's own ``app-config.js`` replaced by one whose DICOMweb data source
is Orthanc, and proxies ``/dicom-web/`` to Orthanc, so the viewer and its data share
one origin (no CORS). :func:`launch_chromium` drives Debian's Chromium through
Playwright (Playwright's own browser download is not needed).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parent.parent

#: where a run keeps what a person looks at afterwards (screenshots); ignored by git
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # WebGL in software: OHIF renders its viewports with WebGL
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

_MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
}


class ViewerUnavailable(Exception):
    """OHIF or Chromium cannot be installed or started here; the test skips with this."""


class ViewerDidNotShow(AssertionError):
    """OHIF did not show what a test waited for, within the time allowed."""


class ViewerCrashed(ViewerDidNotShow):
    """OHIF's error boundary caught an error while a test waited (the view is gone)."""


def ohif_dist() -> Path:
    """The folder of OHIF's prebuilt app, installing it with ``make ohif`` if needed.

    ``DICOMNODE_OHIF_DIST`` names another folder (an AssertionError when it holds no
    app). Raises :class:`ViewerUnavailable` with the reason when OHIF cannot be
    installed (no make or npm, registry unreachable).
    """
    given = os.environ.get("DICOMNODE_OHIF_DIST")
    if given:
        dist = Path(given)
        if not (dist / "index.html").is_file():
            # a folder named on purpose that holds no app is a mistake, not a missing install
            raise AssertionError(f"DICOMNODE_OHIF_DIST={given} holds no OHIF app (index.html)")
    else:
        make = shutil.which("make")
        if make is None:
            raise ViewerUnavailable("OHIF is not installed and `make` is missing to install it")
        result = subprocess.run(
            [make, "-s", "--no-print-directory", "ohif-dist"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        if result.returncode != 0:
            raise ViewerUnavailable(
                "`make ohif` could not install OHIF from the npm registry:\n"
                + (result.stdout + result.stderr)[-2000:]
            )
        dist = Path(result.stdout.strip().splitlines()[-1])
    if not (dist / "index.html").is_file():
        raise ViewerUnavailable(f"no OHIF app in {dist} (index.html is missing)")
    return dist


def app_config(dicomweb_root: str) -> str:
    """OHIF's ``app-config.js`` with one DICOMweb data source at ``dicomweb_root``."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "Orthanc (test PACS)",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class ViewerServer:
    """OHIF's app on ``127.0.0.1``, with ``/dicom-web/`` proxied to an Orthanc."""

    def __init__(self, dist: Path, orthanc_http_port: int) -> None:
        self.dist = dist.resolve()
        self.orthanc_port = orthanc_http_port
        self.config = app_config("/dicom-web").encode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            def do_HEAD(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = urlsplit(request.path).path
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            self._proxy(request)
        elif path == "/app-config.js":
            self._send(request, 200, self.config, _MIME[".js"])
        else:
            self._static(request, path)

    def _static(self, request: BaseHTTPRequestHandler, path: str) -> None:
        target = (self.dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.dist) or not target.is_file():
            # a single-page app: every route that is not a file is the app itself
            target = self.dist / "index.html"
        body = target.read_bytes()
        self._send(request, 200, body, _MIME.get(target.suffix, "application/octet-stream"))

    def _proxy(self, request: BaseHTTPRequestHandler) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.orthanc_port, timeout=120)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in {"accept", "range", "content-type"}
        }
        try:
            upstream.request(request.command, request.path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
            kind = response.getheader("Content-Type", "application/octet-stream")
            self._send(request, response.status, body, kind)
        finally:
            upstream.close()

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)


def chromium_path() -> str:
    """Debian's Chromium; raises :class:`ViewerUnavailable` when it is not installed."""
    path = shutil.which("chromium") or shutil.which("chromium", path="/usr/bin")
    if path is None:
        raise ViewerUnavailable("Chromium is not installed (Debian package `chromium`)")
    return path


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Headless Chromium driven by Playwright (each launch has a fresh, temporary profile)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise ViewerUnavailable("Playwright for Python is not installed") from exc
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield browser
        finally:
            browser.close()


#: run in the page before OHIF: no first-visit tour, and OHIF's error boundary noted
#: where a wait can see it (OHIF reports a crashed route with console.debug; other
#: uncaught errors only go to the console log, as OHIF may survive them)
_INIT_SCRIPT = """
localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
window.__viewerErrors = [];
(() => {
  const debug = console.debug.bind(console);
  console.debug = (...args) => {
    if (args.some(a => String(a).includes('Error Boundary'))) {
      window.__viewerErrors.push(args.map(a => String(a && a.stack || a)).join(' '));
    }
    debug(...args);
  };
})();
"""

#: SR thumbnails in OHIF's study browser (series without an image thumbnail)
SR_THUMBNAIL = '[data-cy="study-browser-thumbnail-no-image"]'
#: the lines of SVG text (one ``tspan`` a line) of the annotations drawn in a viewport
VIEWPORT_TEXT = '[data-cy="viewport-pane"] svg text tspan'
#: the question OHIF asks before it loads an SR's measurements as tracked measurements
TRACKING_PROMPT = "Do you want to continue tracking measurements"
MEASUREMENTS_BUTTON = '[data-cy="trackedMeasurements-btn"]'
MEASUREMENTS_PANEL = '[data-cy="trackedMeasurements-panel"]'
MEASUREMENT_ROW = '[data-cy^="measurement-table-row-"]'


class OhifPage:
    """One browser tab on OHIF, with waits on what the page shows.

    Every wait fails at once, with OHIF's error and the console, when OHIF's error
    boundary catches a crash, and after ``timeout`` seconds otherwise.
    """

    def __init__(self, page: Page, base_url: str, artifacts: Path, timeout: float = 60) -> None:
        self.page = page
        self.base_url = base_url
        self.artifacts = artifacts
        self.timeout = timeout
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        page.add_init_script(_INIT_SCRIPT)

    def wait(self, condition: str, what: str, arg: Any = None, timeout: float | None = None) -> Any:
        """Wait until the JavaScript ``condition(arg)`` returns a truthy value; return it.

        Raises :class:`ViewerDidNotShow` naming ``what`` on timeout, and
        :class:`ViewerCrashed` at once when OHIF's error boundary caught an error.
        """
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        guarded = (
            "([arg]) => window.__viewerErrors.length ? {crashed: window.__viewerErrors}"
            f" : ((c) => {{ const v = c(arg); return v ? {{value: v}} : null; }})({condition})"
        )
        limit = self.timeout if timeout is None else timeout
        try:
            handle = self.page.wait_for_function(guarded, arg=[arg], timeout=limit * 1000)
        except PlaywrightTimeout as exc:
            self.keep_failure()
            raise ViewerDidNotShow(
                f"OHIF did not show {what} within {limit:g} s; console:\n{self.console_tail()}"
            ) from exc
        result = handle.json_value()
        if "crashed" in result:
            self.keep_failure()
            raise ViewerCrashed(
                f"OHIF crashed while waiting for {what}: {result['crashed']}\n"
                f"console:\n{self.console_tail()}"
            )
        return result["value"]

    def keep_failure(self) -> None:
        """Keep the console and a screenshot of the page as it is when a wait fails."""
        self.save_console()
        self.screenshot("failure")

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(line[:500] for line in self.console[-lines:])

    def save_console(self) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / "console.log"
        path.write_text("\n".join(self.console) + "\n", encoding="utf-8")
        return path

    def screenshot(self, name: str) -> Path:
        """Save a screenshot of the whole page as ``<artifacts>/<name>.png``."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def open_study(self, study_uid: str, series_count: int) -> None:
        """Open OHIF's viewer on a study; wait until its ``series_count`` series are listed
        and the first image is drawn."""
        self.page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}")
        self.wait(
            """(n) => document.querySelectorAll('[data-cy^="study-browser-thumbnail"]').length >= n
                && /I:\\s*\\d+/.test(document.querySelector(
                   '[data-cy="viewport-overlay-bottom-right"]')?.textContent || '')""",
            f"the study's {series_count} series and its first image",
            series_count,
        )

    def open_sr(self, description: str = "") -> None:
        """Double-click the SR thumbnail (whose description holds ``description``)."""
        thumbnail = self.page.locator(SR_THUMBNAIL, has_text=description).filter(
            has=self.page.locator('[data-cy="series-modality-label"]', has_text="SR")
        )
        thumbnail.first.dblclick()
        self.wait(
            """() => document.querySelector('[data-cy="viewport-pane"]')
                 && [...document.querySelectorAll('[data-cy^="ModalityLoadBadge-"]')]
                      .some(b => b.textContent.includes('SR'))""",
            "the SR in the viewport",
        )

    def annotation_texts(self, containing: str, count: int) -> list[str]:
        """Wait until at least ``count`` lines of annotation text drawn in the viewport
        contain ``containing``; return all of the viewport's lines of annotation text."""
        self.wait(
            """([selector, needle, n]) => [...document.querySelectorAll(selector)]
                 .filter(t => t.textContent.includes(needle)).length >= n""",
            f"{count} annotation(s) reading {containing!r} in the viewport",
            [VIEWPORT_TEXT, containing, count],
        )
        return [str(t) for t in self.page.locator(VIEWPORT_TEXT).all_text_contents()]

    def accept_tracking(self) -> None:
        """Answer Yes to OHIF's question whether to track the SR's measurements."""
        self.wait(
            "(text) => document.body.innerText.includes(text)",
            f"the prompt {TRACKING_PROMPT!r} (OHIF asks only when it can load the SR)",
            TRACKING_PROMPT,
        )
        self.page.get_by_role("button", name="Yes", exact=True).click()

    def measurement_rows(self, count: int) -> list[tuple[str, str]]:
        """Open the Measurements panel; wait for ``count`` rows; return (title, details)."""
        if not self.page.locator(MEASUREMENTS_PANEL).is_visible():
            self.page.locator(MEASUREMENTS_BUTTON).click()
        self.wait(
            "([sel, n]) => document.querySelectorAll(sel).length >= n",
            f"{count} row(s) in the Measurements panel",
            [MEASUREMENT_ROW, count],
        )
        rows = []
        for row in self.page.locator(MEASUREMENT_ROW).all():
            title = row.locator('[data-cy="data-row-title"]').all_text_contents()
            details = row.locator('[data-cy="data-row-details"]').all_text_contents()
            rows.append((" ".join(title).strip(), " ".join(details).strip()))
        return rows


class OhifHarness:
    """Orthanc with DICOMweb, OHIF served in front of it, and a headless Chromium."""

    def __init__(self, orthanc: Any, server: ViewerServer, browser: Browser, artifacts: Path):
        self.orthanc = orthanc
        self.server = server
        self.browser = browser
        self.artifacts = artifacts

    def upload(self, files: list[Path]) -> None:
        """Store ``files`` in Orthanc (REST), where OHIF finds them over DICOMweb."""
        self.orthanc.upload(files)

    def new_page(self) -> OhifPage:
        context = self.browser.new_context(
            viewport={"width": 1600, "height": 1000}, service_workers="block"
        )
        return OhifPage(context.new_page(), self.server.url, self.artifacts)


def artifacts_dir(test_name: str) -> Path:
    """An emptied ``test-artifacts/ohif/<test name>`` folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in test_name)
    path = ARTIFACTS / "ohif" / safe
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@contextmanager
def ohif_harness(root: Path, test_name: str) -> Iterator[OhifHarness]:
    """Start Orthanc (DICOMweb), OHIF's server and Chromium; stop them afterwards.

    Raises :class:`ViewerUnavailable` when OHIF, Chromium or Playwright is missing.
    """
    from tests.orthanc import Orthanc

    dist = ohif_dist()
    chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise ViewerUnavailable("Playwright for Python is not installed") from exc
    orthanc = Orthanc(root / "orthanc", dicomweb=True).start()
    try:
        server = ViewerServer(dist, orthanc.http_port).start()
        try:
            with launch_chromium() as browser:
                yield OhifHarness(orthanc, server, browser, artifacts_dir(test_name))
        finally:
            server.stop()
    finally:
        orthanc.stop()
