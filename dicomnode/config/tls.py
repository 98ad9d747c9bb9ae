"""TLS settings, and the :class:`ssl.SSLContext` each one stands for.

Two models: :class:`ServerTLSConfig` (``ingress.tls``: the node's certificate
for associations it accepts) and :class:`ClientTLSConfig` (a destination's
``tls``: how the node checks a peer it connects to, and the certificate it
shows). Both are checked when the file is loaded: every file must be readable,
and the context is built once, so a certificate that does not match its key or
a CA file that is not PEM is an error naming its field, before the node starts.

The contexts follow BCP 195 (RFC 9325): TLS 1.2 or newer only, and for
TLS 1.2 only cipher suites with forward secrecy (ECDHE) and authenticated
encryption (AES-GCM, ChaCha20-Poly1305); TLS 1.3 suites are all of that kind.
No compression, no renegotiation.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: TLS 1.2 cipher suites offered and accepted (OpenSSL names): ECDHE key
#: exchange with AEAD ciphers, as BCP 195 (RFC 9325, 4.2) recommends.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"

TLSVersion = Literal["1.2", "1.3"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _readable(path: Path | None) -> Path | None:
    """The path, when the node can open it for reading."""
    if path is None:
        return None
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return path


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)


def _harden(context: ssl.SSLContext, min_version: TLSVersion) -> None:
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


class ServerTLSConfig(_Model):
    """TLS for the DICOM listener (``ingress.tls``).

    With ``port`` unset the node's port speaks TLS only; with ``port`` set, a
    second listener there speaks TLS and the node's port stays plain TCP.
    """

    certificate: Path = Field(
        description="The node's certificate (PEM), followed by any intermediate certificates."
    )
    private_key: Path = Field(description="The certificate's private key (PEM, unencrypted).")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "A second port that speaks TLS (2762 is DICOM's registered one); "
            "unset: node.port speaks TLS and nothing listens in plain TCP."
        ),
    )
    min_version: TLSVersion = Field(default="1.2", description="Oldest TLS version accepted.")
    require_client_cert: bool = Field(
        default=False,
        description="Refuse a sender that does not present a certificate signed by ca_file.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) (PEM) that senders' certificates must chain to.",
    )

    _files = field_validator("certificate", "private_key", "ca_file")(_readable)

    @model_validator(mode="after")
    def _loadable(self) -> ServerTLSConfig:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("ca_file: required when require_client_cert is true")
        if not self.require_client_cert and self.ca_file is not None:
            raise ValueError(
                "ca_file: only used with require_client_cert: true (set it, or remove ca_file)"
            )
        self.context()
        return self

    def context(self) -> ssl.SSLContext:
        """A server-side context for accepted connections.

        Raises
        ------
        ValueError
            A file cannot be loaded; the message names the field.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _harden(context, self.min_version)
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        try:
            context.load_cert_chain(self.certificate, self.private_key)
        except ssl.SSLError as exc:
            raise ValueError(
                "certificate, private_key: cannot load the certificate with its key "
                f"({_ssl_reason(exc)}); both must be PEM and belong together"
            ) from exc
        if self.require_client_cert and self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except ssl.SSLError as exc:
                raise ValueError(f"ca_file: not a PEM CA certificate ({_ssl_reason(exc)})") from exc
            context.verify_mode = ssl.CERT_REQUIRED
        else:
            context.verify_mode = ssl.CERT_NONE
        return context


class ClientTLSConfig(_Model):
    """TLS towards one destination (its ``tls`` key).

    The peer's certificate is always verified: against ``ca_file`` when set,
    else against the system's CA certificates.
    """

    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) (PEM) the peer's certificate must chain to; "
        "default: the system's CA certificates.",
    )
    certificate: Path | None = Field(
        default=None, description="The node's client certificate (PEM), when the peer asks one."
    )
    private_key: Path | None = Field(
        default=None, description="The client certificate's private key (PEM, unencrypted)."
    )
    check_hostname: bool = Field(
        default=True,
        description="Require the peer's certificate to name the host connected to.",
    )
    server_hostname: str | None = Field(
        default=None,
        min_length=1,
        description="The name expected in the peer's certificate; default: the destination's host.",
    )
    min_version: TLSVersion = Field(default="1.2", description="Oldest TLS version offered.")

    _files = field_validator("ca_file", "certificate", "private_key")(_readable)

    @model_validator(mode="after")
    def _loadable(self) -> ClientTLSConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate, private_key: give both or neither")
        self.context()
        return self

    def context(self) -> ssl.SSLContext:
        """A client-side context that verifies the peer.

        Raises
        ------
        ValueError
            A file cannot be loaded; the message names the field.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _harden(context, self.min_version)
        context.check_hostname = self.check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            if self.ca_file is None:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cafile=self.ca_file)
        except ssl.SSLError as exc:
            raise ValueError(f"ca_file: not a PEM CA certificate ({_ssl_reason(exc)})") from exc
        if self.certificate is not None and self.private_key is not None:
            try:
                context.load_cert_chain(self.certificate, self.private_key)
            except ssl.SSLError as exc:
                raise ValueError(
                    "certificate, private_key: cannot load the certificate with its key "
                    f"({_ssl_reason(exc)}); both must be PEM and belong together"
                ) from exc
        return context

    def hostname_for(self, host: str) -> str:
        """The name the peer's certificate is checked against when connecting to ``host``."""
        return self.server_hostname or host
