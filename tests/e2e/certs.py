"""A throw-away PKI for nodes that serve mutual TLS and a bearer token, as nodes on a real
network must (berthd refuses plaintext off loopback). Laid out as docs/make-certs.sh lays a
deployment out: a server CA signs the nodes (serverAuth only), a client CA signs the hub
(clientAuth only, SAN DNS:hub), and nodes trust only the client CA for clients and only the
name "hub" (hub_client_names)."""

import datetime
import ipaddress
import os
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, ca=False, san=None, usage=None):
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
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    with open(path, "wb") as f:
        if cert is not None:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
    return path


class Pki:
    """The two CAs, the hub's client certificate and a shared bearer token, written under `d`;
    `node()` issues one node's server certificate."""

    CA = "berth e2e server CA"
    CLIENT_CA = "berth e2e client CA"
    HUB = "hub"

    def __init__(self, d):
        self.dir = d
        os.makedirs(d, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca = _cert(self.CA, self._ca_key, self.CA, self._ca_key, ca=True)
        # What the hub checks nodes against.
        self.ca_file = _write(os.path.join(d, "ca.pem"), self._ca)
        client_ca_key = ec.generate_private_key(ec.SECP256R1())
        client_ca = _cert(self.CLIENT_CA, client_ca_key, self.CLIENT_CA, client_ca_key, ca=True)
        # What nodes check clients against.
        self.client_ca_file = _write(os.path.join(d, "client-ca.pem"), client_ca)
        hub_key = ec.generate_private_key(ec.SECP256R1())
        hub = _cert(
            self.HUB,
            hub_key,
            self.CLIENT_CA,
            client_ca_key,
            san=[x509.DNSName(self.HUB)],
            usage=x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        self.hub_cert_file = _write(os.path.join(d, "hub.pem"), hub)
        self.hub_key_file = _write(os.path.join(d, "hub.key"), key=hub_key)
        self.token_file = os.path.join(d, "token")
        # Mode 0600: berthd refuses a token file others can read.
        with open(os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(secrets.token_hex(20))

    def node(self, name, ips=("127.0.0.1",)):
        """Server certificate and key files for a node reached at `ips` (or as localhost)."""
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = _cert(name, key, self.CA, self._ca_key, san=san, usage=x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)
        return (
            _write(os.path.join(self.dir, f"{name}.pem"), cert),
            _write(os.path.join(self.dir, f"{name}.key"), key=key),
        )

    def node_args(self, name, ips=("127.0.0.1",)):
        """berthd flags for mutual TLS with the hub alone as client, and the token."""
        cert, key = self.node(name, ips)
        return [
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--client-ca-file",
            self.client_ca_file,
            "--security-hub-client-names",
            self.HUB,
            "--token-file",
            self.token_file,
        ]

    def client(self):
        """The keys of a BerthSpawner.nodes entry that make the hub present its certificate
        and the token."""
        return {
            "ca_file": self.ca_file,
            "cert_file": self.hub_cert_file,
            "key_file": self.hub_key_file,
            "token_file": self.token_file,
        }
