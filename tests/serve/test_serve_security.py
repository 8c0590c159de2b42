"""TLS (server and mutual) with certificates generated here, the bearer token, and the loopback-only
plaintext default."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_data import ITEMS, QUERY

from slimkit.errors import SlimkitError
from slimkit.serve.client import ScorerClient, ScorerError
from slimkit.serve.options import ServerOptions
from slimkit.serve.server import make_server, read_token

x509 = pytest.importorskip("cryptography.x509")


def _pem_pair(tmp, name: str, issuer=None, *, ca: bool = False):
    """A key and certificate (for 127.0.0.1 and localhost), signed by `issuer` (key, cert) or self."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer = issuer or (key, None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(signer.subject if signer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    kp, cp = tmp / f"{name}.key", tmp / f"{name}.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, str(kp), str(cp)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, _, ca_pem = _pem_pair(tmp, "ca", ca=True)
    _, _, server_key, server_pem = _pem_pair(tmp, "server", (ca_key, ca_cert))
    _, _, client_key, client_pem = _pem_pair(tmp, "client", (ca_key, ca_cert))
    _, _, other_key, other_pem = _pem_pair(tmp, "stranger")                    # self-signed, not by the CA
    return dict(ca=ca_pem, server=(server_pem, server_key), client=(client_pem, client_key),
                stranger=(other_pem, other_key))


def test_tls_and_bearer_token(torch_engine, pki):
    cert, key = pki["server"]
    server, port = make_server(torch_engine, "127.0.0.1:0",
                               options=ServerOptions(tls_cert=cert, tls_key=key, auth_token="s3cret"))
    addr = f"127.0.0.1:{port}"
    try:
        with ScorerClient(addr, tls_ca=pki["ca"], token="s3cret", timeout=30) as c:
            assert len(c.score(QUERY, ITEMS).scores) == len(ITEMS)
        for token in (None, "wrong"):
            with ScorerClient(addr, tls_ca=pki["ca"], token=token, timeout=30) as c:
                with pytest.raises(ScorerError, match="bearer token") as e:
                    c.score(QUERY, ITEMS)
                assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(ScorerError) as e:
                    c.model_info()
                assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with grpc.secure_channel(addr, grpc.ssl_channel_credentials(open(pki["ca"], "rb").read())) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert r.status == health_pb2.HealthCheckResponse.SERVING        # health needs no token
        with ScorerClient(addr, token="s3cret", timeout=5) as c:             # plaintext to a TLS port
            with pytest.raises(ScorerError) as e:
                c.score(QUERY, ITEMS)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(torch_engine, pki):
    cert, key = pki["server"]
    server, port = make_server(torch_engine, "127.0.0.1:0",
                               options=ServerOptions(tls_cert=cert, tls_key=key, tls_client_ca=pki["ca"]))
    addr = f"127.0.0.1:{port}"
    try:
        ccert, ckey = pki["client"]
        with ScorerClient(addr, tls_ca=pki["ca"], tls_cert=ccert, tls_key=ckey, timeout=30) as c:
            assert len(c.score(QUERY, ITEMS[:2]).scores) == 2
        scert, skey = pki["stranger"]
        for extra in ({}, dict(tls_cert=scert, tls_key=skey)):
            with ScorerClient(addr, tls_ca=pki["ca"], timeout=5, **extra) as c:
                with pytest.raises(ScorerError) as e:
                    c.score(QUERY, ITEMS[:2])
                assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()


def test_plaintext_only_on_loopback_unless_allowed(torch_engine, tmp_path, pki):
    with pytest.raises(SlimkitError, match="refusing to serve plaintext on 0.0.0.0"):
        make_server(torch_engine, "0.0.0.0:0")
    server, _ = make_server(torch_engine, "0.0.0.0:0", options=ServerOptions(allow_insecure=True))
    assert "reachable from other machines" in server.security
    server.stop(0).wait()
    cert, key = pki["server"]
    server, _ = make_server(torch_engine, "0.0.0.0:0", options=ServerOptions(tls_cert=cert, tls_key=key))
    assert server.security == "TLS"
    server.stop(0).wait()
    with pytest.raises(SlimkitError, match="needs both --tls-cert and --tls-key"):
        make_server(torch_engine, "127.0.0.1:0", options=ServerOptions(tls_cert=cert))
    with pytest.raises(SlimkitError, match="does not exist"):
        make_server(torch_engine, "127.0.0.1:0", options=ServerOptions(tls_cert=cert, tls_key=str(tmp_path / "no")))
    (tmp_path / "token").write_text("abc\n")
    assert read_token(str(tmp_path / "token")) == "abc"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SlimkitError, match="one non-empty line"):
        read_token(str(tmp_path / "empty"))
