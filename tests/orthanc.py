"""Orthanc (from Debian) as the PACS, started by a test on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port, require_tool, wait_for

#: Debian's orthanc-dicomweb plugin (QIDO-RS, WADO-RS, STOW-RS under ``/dicom-web/``)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """One Orthanc process with its own config, storage and free ports.

    ``dicomweb=True`` loads the DICOMweb plugin, serving ``/dicom-web/`` on the HTTP
    port, as a web viewer needs it.
    """

    AET = "ORTHANC"

    def __init__(
        self,
        root: Path,
        modalities: dict[str, list[Any]] | None = None,
        *,
        dicomweb: bool = False,
    ) -> None:
        self.root = root
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.dicomweb = dicomweb
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "DicomAet": self.AET,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "SyncStorageArea": True,
            "TcpNoDelay": True,
            "Plugins": [],
            "DicomModalities": self.modalities,
        }
        if self.dicomweb:
            if not DICOMWEB_PLUGIN.is_file():
                raise AssertionError(
                    f"{DICOMWEB_PLUGIN} is not installed; `make test` installs the test peers"
                )
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Ssl": False,
                # what a viewer reads per series: every instance's full metadata
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            [require_tool("Orthanc"), str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        log.close()
        wait_for(self._up, 60, "Orthanc to answer", interval=0.2)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError((self.root / "orthanc.log").read_text(errors="replace"))
        try:
            self.get("/system")
        except OSError:
            return False
        return True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes | str, content_type: str = "application/json") -> Any:
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(
            self.url(path), data=data, method="POST", headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def upload(self, files: list[Path]) -> str:
        """Upload files through the REST API; return the Orthanc study id."""
        study = ""
        for path in files:
            study = self.post("/instances", path.read_bytes(), "application/dicom")["ParentStudy"]
        return study

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
