"""TLS on the receivers: a server certificate, and client certificates when a client CA is given.

The files are read and the key checked against the certificate when the config loads, so a
wrong path or a mismatched pair is a config error naming its key (`receivers.http.tls.key_file`),
not a failure at start. They are read again when a listener starts; changing them takes effect
when the listeners are restarted.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
from pydantic import Field, field_validator, model_validator

from gateway.configtypes import StrictModel


class ServerTlsConfig(StrictModel):
    cert_file: str = Field(description="PEM server certificate (chain), leaf first.")
    key_file: str = Field(description="PEM private key of cert_file.")
    client_ca_file: str | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).")

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _readable(cls, path: str | None) -> str | None:
        if path is not None:
            try:
                Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        return path

    @model_validator(mode="after")
    def _loads(self) -> "ServerTlsConfig":
        try:
            server_ssl_context(self)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot use cert_file {self.cert_file} with key_file {self.key_file}"
                             f"{' and client_ca_file ' + self.client_ca_file if self.client_ca_file else ''}: "
                             f"{exc.reason or exc}") from None
        return self

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


def server_ssl_context(config: ServerTlsConfig) -> ssl.SSLContext:
    """For aiohttp: TLS 1.2 or newer; with a client CA, a client certificate is required and verified."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        context.load_verify_locations(cafile=config.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_server_credentials(config: ServerTlsConfig) -> grpc.ServerCredentials:
    """For grpc: the same files; `require_client_auth` when a client CA is given."""
    ca = Path(config.client_ca_file).read_bytes() if config.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(config.key_file).read_bytes(), Path(config.cert_file).read_bytes())],
        root_certificates=ca, require_client_auth=ca is not None)
