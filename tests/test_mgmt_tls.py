"""
The management API over TLS, configured through its endpoint string
(C{CAIRN_MGMT_LISTEN=ssl:...:privateKey=...:certKey=...}), as
docs/management.md and docs/deployment.md describe: a real node, a
self-signed certificate made here, an authenticated GET over HTTPS.
"""

import datetime
import ipaddress
import json
import os
import ssl
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from cairn.service import make_node
from tests._harness import eventually
from tests.test_service import config_for

TOKEN = "a management token for the TLS test"


def self_signed(directory):
    """Write a key (0600) and a self-signed certificate for 127.0.0.1 and localhost; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cairn management test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = os.path.join(directory, "mgmt.key"), os.path.join(directory, "mgmt.crt")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pem = serialization.Encoding.PEM
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def fetch(url, cafile=None, token=None):
    """A blocking GET (run in a thread): (status, body); C{cafile} is the only trusted certificate."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class ManagementTLSTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        certs = os.path.abspath(self.mktemp())
        os.makedirs(certs)
        self.key, self.cert = self_signed(certs)
        listen = f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"
        self.node = make_node(config_for(data_dir, mgmt_listen=listen, mgmt_token=TOKEN), reactor)
        self.node.startService()
        ports = yield eventually(self.node.ready)
        self.url = f"https://127.0.0.1:{ports['management'].getHost().port}"

    def tearDown(self):
        return self.node.stopService()

    @defer.inlineCallbacks
    def test_authenticated_get_over_tls(self):
        """GET /peers with the bearer token over HTTPS, the certificate checked, answers 200 with the peer list."""
        status, body = yield threads.deferToThread(fetch, self.url + "/peers", self.cert, TOKEN)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), [])

    @defer.inlineCallbacks
    def test_token_still_required(self):
        """Over TLS too, a request without the token is refused with 401."""
        status, _ = yield threads.deferToThread(fetch, self.url + "/peers", self.cert)
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_untrusted_certificate_refused(self):
        """A client that does not trust the node's certificate does not get through (it never sends the token)."""
        failure = yield self.assertFailure(
            threads.deferToThread(fetch, self.url + "/health"),
            urllib.error.URLError,
        )
        self.assertIsInstance(failure.reason, ssl.SSLCertVerificationError)

    @defer.inlineCallbacks
    def test_plain_http_refused(self):
        """Plain HTTP to the TLS listener gets no API answer."""
        plain = self.url.replace("https://", "http://")
        try:
            status, _ = yield threads.deferToThread(fetch, plain + "/health")
        except (urllib.error.URLError, ConnectionError, OSError):
            return
        self.assertNotEqual(status, 200)

    @defer.inlineCallbacks
    def test_cairn_server_pair_over_tls(self):
        """cairn-server pair reaches an ssl: listener and trusts a self-signed certificate named by SSL_CERT_FILE."""
        from cairn.cli import pairing_api as cli_pair

        port = self.url.rsplit(":", 1)[1]
        environ = {
            "CAIRN_MGMT_TOKEN": TOKEN,
            "CAIRN_DATA_DIR": self.mktemp(),
            "CAIRN_MGMT_LISTEN": f"ssl:{port}:privateKey={self.key}:certKey={self.cert}",
        }
        saved = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = self.cert  # read by OpenSSL when the client context loads its defaults
        try:
            printed = yield threads.deferToThread(cli_pair.pair, "pin", environ)
        finally:
            if saved is None:
                del os.environ["SSL_CERT_FILE"]
            else:
                os.environ["SSL_CERT_FILE"] = saved
        self.assertRegex(printed.split("\n")[0], r"^[0-9A-Z]{4}-[0-9A-Z]{4}$")
