"""berthspawner talks to a node that requires mutual TLS and a bearer token."""

import datetime
import ipaddress
import os
import secrets

from conftest import TINY, Berthd, Hub
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, ca=False, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    with open(path, "wb") as f:
        if cert is not None:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return path


def test_spawning_through_a_node_with_mutual_tls_and_a_token(workdir):
    d = os.path.join(workdir, "secure")
    os.makedirs(d, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("berth e2e CA", ca_key, "berth e2e CA", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("node", srv_key, "berth e2e CA", ca_key,
                san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    hub_key = ec.generate_private_key(ec.SECP256R1())
    hub_cert = _cert("hub", hub_key, "berth e2e CA", ca_key)
    files = {
        "ca": _write(os.path.join(d, "ca.pem"), ca),
        "srv_cert": _write(os.path.join(d, "node.pem"), srv),
        "srv_key": _write(os.path.join(d, "node.key"), key=srv_key),
        "hub_cert": _write(os.path.join(d, "hub.pem"), hub_cert),
        "hub_key": _write(os.path.join(d, "hub.key"), key=hub_key),
    }
    token = os.path.join(d, "token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(20))
    with (
        Berthd(
            "secure",
            d,
            args=["--tls-cert-file", files["srv_cert"], "--tls-key-file", files["srv_key"],
                  "--client-ca-file", files["ca"], "--token-file", token],
            client={"ca_file": files["ca"], "cert_file": files["hub_cert"], "key_file": files["hub_key"],
                    "token_file": token},
        ) as node,
        Hub(d, [node], extra='c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]') as hub,
    ):
        hub.spawn("tls-user", options={"image": TINY})
        assert len(node.containers("tls-user")) == 1
        r = hub.api("DELETE", "/users/tls-user/server")
        assert r.status_code in (202, 204)
