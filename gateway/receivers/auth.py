"""API keys on the receivers: who may send, and which tenant their data belongs to.

Both receivers check the key in the request's headers (gRPC metadata) before reading or
decoding the body, as the Collector's auth extensions do, so a client without a key cannot make
the gateway inflate or parse anything. Keys are compared as SHA-256 digests with
`hmac.compare_digest`, against every configured key without stopping at the first match, so the
time taken tells nothing about which key matched or how much of one. A key is never logged or
echoed: at most its fingerprint, the first 8 hex digits of its SHA-256.

`Authenticator` is a plain object built from the `auth:` config. The receivers read it from the
shared `Intake` once per request, so a config reload swaps the key set by assigning a new one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from pathlib import Path

from collections.abc import Iterable
from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator

from gateway.configtypes import StrictModel

BEARER_HEADER = "authorization"
# What gRPC metadata keys may be (lower case; `-bin` suffix means binary, so never a key).
_HEADER_NAME = re.compile(r"^[a-z0-9_.-]+$")
# A key must travel in a header unchanged: visible ASCII, no spaces.
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")


def fingerprint(key: str) -> str:
    """What may be shown of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]


class ApiKeyConfig(StrictModel):
    """One key and the tenant it names; the key is given inline, in a file, or in the environment."""

    key: SecretStr | None = Field(None, description="The key itself (prefer key_file or key_env: a config file is often shared).")
    key_file: str | None = Field(None, description="A file holding the key (surrounding whitespace ignored).")
    key_env: str | None = Field(None, description="An environment variable holding the key.")
    tenant: str = Field(min_length=1, max_length=256)
    _secret: str = PrivateAttr("")

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> "ApiKeyConfig":
        """Read the key now, so a missing file or variable fails at load, naming where it was looked for."""
        given = [name for name in ("key", "key_file", "key_env") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of key, key_file, key_env")
        if self.key is not None:
            secret = self.key.get_secret_value()
        elif self.key_file is not None:
            try:
                secret = Path(self.key_file).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"key_file: cannot read {self.key_file}: {getattr(exc, 'strerror', None) or exc}") from None
        else:
            environ = (info.context or {}).get("environ", os.environ)  # config.parse passes the one ${env:...} reads
            value = environ.get(self.key_env or "")
            if value is None:
                raise ValueError(f"key_env: environment variable {self.key_env} is not set")
            secret = value
        secret = secret.strip()
        if not secret:
            raise ValueError(f"{given[0]}: the key is empty")
        if not _KEY_CHARS.match(secret):
            raise ValueError(f"{given[0]}: a key must be visible ASCII without spaces (it travels in a header)")
        self._secret = secret
        return self

    def secret(self) -> str:
        return self._secret


class LangfuseKeyConfig(StrictModel):
    """A Langfuse project's key pair, as the Langfuse SDK sends it (Basic auth), and its tenant."""

    public_key: str = Field(min_length=1)
    secret_key: SecretStr = Field(min_length=1)
    tenant: str = Field(min_length=1, max_length=256)


class AuthConfig(StrictModel):
    header: str = Field(
        BEARER_HEADER, description="`authorization` (the key as `Bearer <key>`), or a header carrying the raw key, such as x-api-key.")
    keys: list[ApiKeyConfig] = Field(default_factory=list, description="OTLP API keys (required on the OTLP paths when `auth` is set).")
    langfuse_keys: list[LangfuseKeyConfig] = Field(
        default_factory=list, description="Key pairs accepted on the Langfuse-compatible path /api/public/otel/v1/traces.")
    tenant_attribute: str | None = Field(
        "otelgate.tenant", min_length=1, description="Resource attribute the key's tenant is written to; null: not written.")

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEADER_NAME.match(value) or value.endswith("-bin"):
            raise ValueError(f"not a usable header name: {value!r} (letters, digits, - _ . ; not ending in -bin)")
        return value

    @model_validator(mode="after")
    def _distinct_keys(self) -> "AuthConfig":
        if not self.keys and not self.langfuse_keys:
            raise ValueError("give keys (OTLP API keys) or langfuse_keys, or omit auth")
        first: dict[str, int] = {}
        for i, entry in enumerate(self.keys):
            j = first.setdefault(entry.secret(), i)
            if j != i:
                raise ValueError(f"keys[{i}]: the same key as keys[{j}] (fingerprint {fingerprint(entry.secret())}); one key names one tenant")
        return self


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic ...` header, or None if it is not one."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep and user else None


class Unauthenticated(Exception):
    """No known key on a request. The message is safe to send back: it never holds the key."""

    def __init__(self, message: str, challenge: str, fingerprint: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge  # HTTP `WWW-Authenticate`: how to authenticate
        self.fingerprint = fingerprint  # of the unknown key that was sent, for the log


class Authenticator:
    """The key set of one config: header value -> tenant, in constant time per key."""

    def __init__(self, config: AuthConfig) -> None:
        self.header = config.header
        self.tenant_attribute = config.tenant_attribute
        self._bearer = config.header == BEARER_HEADER
        self._keys = tuple((hashlib.sha256(k.secret().encode()).digest(), k.tenant) for k in config.keys)
        self._langfuse = tuple((hashlib.sha256(f"{p.public_key}:{p.secret_key.get_secret_value()}".encode()).digest(), p.tenant)
                               for p in config.langfuse_keys)
        self.fingerprints = tuple(fingerprint(k.secret()) for k in config.keys)
        self._how = "`authorization: Bearer <key>`" if self._bearer else f"the key in the `{config.header}` header"
        self._challenge = 'Bearer realm="otelgate"' if self._bearer else f'ApiKey header="{config.header}"'

    def langfuse_tenant(self, header: str | None) -> tuple[str, tuple[str, str]]:
        """The tenant and credentials of a Langfuse SDK's `Authorization: Basic` header; raise
        `Unauthenticated` unless it is one of `langfuse_keys` (compared as the API keys are)."""
        challenge = 'Basic realm="otelgate (Langfuse path)"'
        credentials = basic_credentials(header)
        if credentials is None:
            raise Unauthenticated("missing Langfuse credentials: send Authorization: Basic base64(public_key:secret_key)",
                                  challenge)
        digest = hashlib.sha256(f"{credentials[0]}:{credentials[1]}".encode("utf-8", "surrogateescape")).digest()
        tenant = None
        for pair_digest, pair_tenant in self._langfuse:
            if hmac.compare_digest(digest, pair_digest):
                tenant = pair_tenant
        if tenant is None:
            raise Unauthenticated("unknown Langfuse key pair", challenge, fingerprint(credentials[1]))
        return tenant, credentials

    def tenant(self, credential: str | None) -> str:
        """The tenant of the key in `credential` (the header's value); raise `Unauthenticated`."""
        token = (credential or "").strip()
        if self._bearer and token:
            scheme, _, token = token.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated(f"the authorization header must be Bearer: send {self._how}", self._challenge)
            token = token.strip()
        if not token:
            raise Unauthenticated(f"missing API key: send {self._how}", self._challenge)
        if not self._keys:
            raise Unauthenticated("no OTLP API keys are configured (auth.keys): only the Langfuse path is open", self._challenge)
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        tenant = None
        for key_digest, key_tenant in self._keys:  # every key, no early exit
            if hmac.compare_digest(digest, key_digest):
                tenant = key_tenant
        if tenant is None:
            raise Unauthenticated("unknown API key", self._challenge, fingerprint(token))
        return tenant


def stamp_tenant(resources: Iterable[Any], attribute: str, tenant: str) -> None:
    """Write `attribute=tenant` on every resource (`request.resource_spans`, `resource_logs`...),
    replacing whatever the sender put there: the tenant is the key's to say, not the sender's."""
    for rs in resources:
        attributes = rs.resource.attributes
        for i in reversed(range(len(attributes))):
            if attributes[i].key == attribute:
                del attributes[i]
        attributes.add(key=attribute).value.string_value = tenant
