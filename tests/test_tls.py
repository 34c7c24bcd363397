"""TLS and mutual TLS on both receivers, with a throwaway CA and the real SDK exporters.

A client that does not trust the server, or (with mTLS) has no certificate from the client CA,
fails its handshake: the exporter reports failure (after its own retries, bounded by a short
timeout) and nothing reaches the sink.
"""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import ConfigError, parse
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.sdk_export import export

FAIL_TIMEOUT_S = 1.0  # how long an exporter expected to fail keeps retrying


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets these variables override a session's `verify`, so the HTTP exporter's
    `certificate_file` would be ignored where they are set (psf/requests#3829)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           ca: bool = False, server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[Path, Path | None]:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (d / f"{name}-key.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return d / f"{name}.pem", d / f"{name}-key.pem" if key is not None else None

    ca = _issue("otelgate test CA", None, ca=True)
    rogue = _issue("some other CA", None, ca=True)
    server = _issue("localhost", ca, server=True)
    client = _issue("client-a", ca)
    rogue_client = _issue("client-b", rogue)
    ca_path, _ = write("ca", ca[0])
    rogue_ca_path, _ = write("rogue-ca", rogue[0])
    server_cert, server_key = write("server", *server)
    client_cert, client_key = write("client", *client)
    rogue_cert, rogue_key = write("rogue-client", *rogue_client)
    return Pki(ca_path, server_cert, server_key, client_cert, client_key, rogue_ca_path, rogue_cert, rogue_key)  # type: ignore[arg-type]


def _gateway(tmp_path: Path, pki: Pki, mutual: bool) -> GatewayProcess:
    config = gateway_config(tmp_path)
    tls: dict[str, Any] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mutual:
        tls["client_ca_file"] = str(pki.ca)
    for receiver in config["receivers"].values():
        receiver["tls"] = tls
    return GatewayProcess(config, tmp_path).wait_ready()


@pytest.fixture(scope="module")
def tls_gw(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[GatewayProcess]:
    gw = _gateway(tmp_path_factory.mktemp("tls"), pki, mutual=False)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def mtls_gw(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[GatewayProcess]:
    gw = _gateway(tmp_path_factory.mktemp("mtls"), pki, mutual=True)
    yield gw
    gw.stop()


def _client(pki: Pki, protocol: str, trust: Path | None, cert: tuple[Path, Path] | None) -> dict[str, Any]:
    """Exporter arguments: trust `trust` (None: plain text), present `cert` (None: no certificate)."""
    if trust is None:
        return {}
    if protocol == "grpc":
        return {"credentials": grpc.ssl_channel_credentials(
            root_certificates=trust.read_bytes(),
            private_key=cert[1].read_bytes() if cert else None,
            certificate_chain=cert[0].read_bytes() if cert else None)}
    args: dict[str, Any] = {"certificate_file": str(trust)}
    if cert:
        args.update(client_certificate_file=str(cert[0]), client_key_file=str(cert[1]))
    return args


def _endpoint(gw: GatewayProcess, protocol: str, tls: bool = True) -> str:
    if protocol == "grpc":
        return gw.grpc
    return ("https://" if tls else "http://") + gw.endpoints["OTLP/HTTP"]


def _names(gw: GatewayProcess) -> set[str]:
    return {s["name"] for s in spans_in(read_json_lines(gw.workdir / "out.jsonl"))}


def _assert_refused_then_served(gw: GatewayProcess, protocol: str, bad: dict[str, Any], good: dict[str, Any],
                                tls: bool = True) -> None:
    refused = f"refused-{uuid.uuid4().hex}"
    assert not export(protocol, _endpoint(gw, protocol, tls), refused, timeout=FAIL_TIMEOUT_S, **bad)
    served = f"served-{uuid.uuid4().hex}"
    assert export(protocol, _endpoint(gw, protocol), served, **good)
    wait_for(lambda: served in _names(gw))
    assert refused not in _names(gw)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_serves_a_client_that_trusts_the_ca(tls_gw: GatewayProcess, pki: Pki, protocol: str) -> None:
    name = f"tls-{uuid.uuid4().hex}"
    assert export(protocol, _endpoint(tls_gw, protocol), name, **_client(pki, protocol, pki.ca, None))
    wait_for(lambda: name in _names(tls_gw))
    assert "tls=tls" in tls_gw.log_text()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("client", ["plain-text", "untrusted-server"])
def test_tls_refuses_plain_text_and_untrusting_clients(tls_gw: GatewayProcess, pki: Pki, protocol: str, client: str) -> None:
    bad = _client(pki, protocol, None if client == "plain-text" else pki.rogue_ca, None)
    _assert_refused_then_served(tls_gw, protocol, bad, _client(pki, protocol, pki.ca, None), tls=client != "plain-text")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mtls_serves_a_client_with_a_certificate_from_the_ca(mtls_gw: GatewayProcess, pki: Pki, protocol: str) -> None:
    name = f"mtls-{uuid.uuid4().hex}"
    assert export(protocol, _endpoint(mtls_gw, protocol), name,
                  **_client(pki, protocol, pki.ca, (pki.client_cert, pki.client_key)))
    wait_for(lambda: name in _names(mtls_gw))
    assert "tls=mtls" in mtls_gw.log_text()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("client", ["no-certificate", "certificate-from-another-ca"])
def test_mtls_refuses_a_client_without_a_valid_certificate(mtls_gw: GatewayProcess, pki: Pki, protocol: str, client: str) -> None:
    cert = None if client == "no-certificate" else (pki.rogue_cert, pki.rogue_key)
    _assert_refused_then_served(mtls_gw, protocol, _client(pki, protocol, pki.ca, cert),
                                _client(pki, protocol, pki.ca, (pki.client_cert, pki.client_key)))


def test_tls_config_errors_name_the_key(pki: Pki, tmp_path: Path) -> None:
    def errors(tls: dict[str, str]) -> list[str]:
        text = f"receivers: {{grpc: {{tls: {tls!r}}}}}\nsinks: {{out: {{type: file, path: /tmp/x}}}}\n"
        with pytest.raises(ConfigError) as err:
            parse(text)
        return err.value.errors

    missing = str(tmp_path / "missing.pem")
    assert errors({"cert_file": missing, "key_file": str(pki.server_key)}) == [
        f"receivers.grpc.tls.cert_file: cannot read {missing}: No such file or directory"]
    assert errors({"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "client_ca_file": missing}) == [
        f"receivers.grpc.tls.client_ca_file: cannot read {missing}: No such file or directory"]
    assert errors({"cert_file": str(pki.server_cert)}) == ["receivers.grpc.tls.key_file: required"]
    mismatched = errors({"cert_file": str(pki.server_cert), "key_file": str(pki.client_key)})
    assert len(mismatched) == 1 and mismatched[0].startswith(f"receivers.grpc.tls: cannot use cert_file {pki.server_cert}")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    assert errors({"cert_file": str(not_pem), "key_file": str(pki.server_key)})[0].startswith("receivers.grpc.tls: cannot use")
