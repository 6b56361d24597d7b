"""Tests for L{cairn.config}: environment and flags into one typed Config."""

import os

import attr
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from cairn.config import (
    Config,
    ConfigError,
    parse_bool,
    parse_duration,
    parse_endpoint,
    parse_size,
)
from cairn.config_fields import default_node_name

SECRETS = {
    "CAIRN_MGMT_TOKEN": "tok-3f9a-SECRET",
    "CAIRN_PSK": "psk-77c1-SECRET",
    "CAIRN_TURN_SECRET": "turn-0b2e-SECRET",
    "CAIRN_SIGNAL_TOKEN": "sig-5d1c-SECRET",
}

DEFAULTS = {
    "data_dir": "/data",
    "listen": "tcp:7400",
    "ws_listen": "tcp:7401",
    "ws_allowed_origins": (),
    "mgmt_listen": "tcp:9090:interface=127.0.0.1",
    "max_payload": 1_000_000,
    "keepalive_interval": 30.0,
    "keepalive_timeout": 90.0,
    "handshake_timeout": 10.0,
    "max_handshakes_per_source": 16,
    "max_write_buffer": 32 * 2**20,
    "session_ttl": 3600.0,
    "mgmt_enabled": True,
    "mgmt_token": None,
    "mgmt_token_file": None,
    "psk": None,
    "psk_max_uses": 0,
    "psk_expires": None,
    "forward_enabled": True,
    "forward_max_per_peer": 10_000,
    "forward_max_age": 604_800.0,
    "forward_max_total": 1_000_000_000,
    "disk_reserve": 64 * 2**20,
    "secure_delete": "fast",
    "relay_capacity": 64,
    "sync_access": "all",
    "signal_servers": (),
    "turn_servers": (),
    "public_addresses": (),
    "turn_secret": None,
    "turn_secret_file": None,
    "turn_ttl": 3600.0,
    "log_addresses": False,
    "unpaired_session_ttl": 10.0,
    "max_unpaired_sessions": 1000,
    "max_unpaired_per_source": 32,
    "max_pending_per_source": 10,
    "fd_reserve": 128,
    "signal_listen_addr": "0.0.0.0:8443",
    "signal_token": None,
    "signal_token_file": None,
    "signal_announce_interval": 300.0,
    "log_level": "info",
    "log_format": "text",
    "mgmt_exposed": False,
    "cluster_nats": (),
    "cluster_replicas": 3,
    "cluster_creds_file": None,
    "cluster_tls_ca": None,
    "cluster_prefix": "cairn",
    "cluster_reserve": 8 * 2**20,
    "identity_file": None,
    "node_name": default_node_name(),
    "relay_attach_address": None,
}

# Every variable (but the token and TURN secret files, tested apart) set to a non-default value.
NON_DEFAULT_ENV = {
    "CAIRN_DATA_DIR": "/srv/cairn",
    "CAIRN_LISTEN": "tcp:17400:interface=::1",
    "CAIRN_WS_LISTEN": "unix:/run/cairn/ws.sock",
    "CAIRN_WS_ALLOWED_ORIGINS": "https://app.example, null",
    "CAIRN_MGMT_LISTEN": "tcp:9091",
    "CAIRN_MAX_PAYLOAD": "64KiB",
    "CAIRN_KEEPALIVE_INTERVAL": "15s",
    "CAIRN_KEEPALIVE_TIMEOUT": "1m",
    "CAIRN_HANDSHAKE_TIMEOUT": "2500ms",
    "CAIRN_MAX_HANDSHAKES_PER_SOURCE": "4",
    "CAIRN_MAX_WRITE_BUFFER": "2MiB",
    "CAIRN_SESSION_TTL": "1.5h",
    "CAIRN_MGMT_ENABLED": "false",
    "CAIRN_MGMT_TOKEN": SECRETS["CAIRN_MGMT_TOKEN"],
    "CAIRN_PSK": SECRETS["CAIRN_PSK"],
    "CAIRN_PSK_MAX_USES": "3",
    "CAIRN_PSK_EXPIRES": "2h",
    "CAIRN_FORWARD_ENABLED": "off",
    "CAIRN_FORWARD_MAX_PER_PEER": "250",
    "CAIRN_FORWARD_MAX_AGE": "2w",
    "CAIRN_FORWARD_MAX_TOTAL": "1.5 GB",
    "CAIRN_DISK_RESERVE": "0",
    "CAIRN_SECURE_DELETE": "On",
    "CAIRN_RELAY_CAPACITY": "8",
    "CAIRN_SYNC_ACCESS": "NONE",
    "CAIRN_SIGNAL_SERVERS": "ws://signaling:8443, wss://signal.example.org",
    "CAIRN_TURN_SERVERS": "turn:relay:3478,turns:relay.example:5349,stun:stun.example",
    "CAIRN_TURN_SECRET": SECRETS["CAIRN_TURN_SECRET"],
    "CAIRN_TURN_TTL": "30m",
    "CAIRN_PUBLIC_ADDRESSES": "tcp:host=node.example:port=7400, wss://node.example/cairn",
    "CAIRN_LOG_ADDRESSES": "yes",
    "CAIRN_UNPAIRED_SESSION_TTL": "30s",
    "CAIRN_MAX_UNPAIRED_SESSIONS": "200",
    "CAIRN_MAX_UNPAIRED_PER_SOURCE": "4",
    "CAIRN_MAX_PENDING_PER_SOURCE": "3",
    "CAIRN_FD_RESERVE": "64",
    "CAIRN_SIGNAL_LISTEN_ADDR": "127.0.0.1:9443",
    "CAIRN_SIGNAL_TOKEN": SECRETS["CAIRN_SIGNAL_TOKEN"],
    "CAIRN_SIGNAL_ANNOUNCE_INTERVAL": "90s",
    "CAIRN_LOG_LEVEL": "Debug",
    "CAIRN_LOG_FORMAT": "json",
    "CAIRN_MGMT_EXPOSED": "yes",
    "CAIRN_CLUSTER_NATS": "nats://n1:4222, tls://n2:4222",
    "CAIRN_CLUSTER_REPLICAS": "1",
    "CAIRN_CLUSTER_CREDS_FILE": "/run/secrets/cairn.creds",
    "CAIRN_CLUSTER_TLS_CA": "/etc/nats/tls/ca.pem",
    "CAIRN_CLUSTER_PREFIX": "tenant-7",
    "CAIRN_CLUSTER_RESERVE": "0",
    "CAIRN_IDENTITY_FILE": "/run/secrets/identity.key",
    "CAIRN_NODE_NAME": "node-2",
    "CAIRN_RELAY_ATTACH_ADDRESS": "tcp://node-2.internal:7400",
}

NON_DEFAULTS = {
    "data_dir": "/srv/cairn",
    "listen": "tcp:17400:interface=::1",
    "ws_listen": "unix:/run/cairn/ws.sock",
    "ws_allowed_origins": ("https://app.example", "null"),
    "mgmt_listen": "tcp:9091",
    "max_payload": 65_536,
    "keepalive_interval": 15.0,
    "keepalive_timeout": 60.0,
    "handshake_timeout": 2.5,
    "max_handshakes_per_source": 4,
    "max_write_buffer": 2 * 2**20,
    "session_ttl": 5400.0,
    "mgmt_enabled": False,
    "mgmt_token": SECRETS["CAIRN_MGMT_TOKEN"],
    "mgmt_token_file": None,
    "psk": SECRETS["CAIRN_PSK"],
    "psk_max_uses": 3,
    "psk_expires": 7200.0,
    "forward_enabled": False,
    "forward_max_per_peer": 250,
    "forward_max_age": 1_209_600.0,
    "forward_max_total": 1_500_000_000,
    "disk_reserve": 0,
    "secure_delete": "on",
    "relay_capacity": 8,
    "sync_access": "none",
    "signal_servers": ("ws://signaling:8443", "wss://signal.example.org"),
    "turn_servers": (
        "turn:relay:3478",
        "turns:relay.example:5349",
        "stun:stun.example",
    ),
    "public_addresses": ("tcp:host=node.example:port=7400", "wss://node.example/cairn"),
    "turn_secret": SECRETS["CAIRN_TURN_SECRET"],
    "turn_secret_file": None,
    "turn_ttl": 1800.0,
    "log_addresses": True,
    "unpaired_session_ttl": 30.0,
    "max_unpaired_sessions": 200,
    "max_unpaired_per_source": 4,
    "max_pending_per_source": 3,
    "fd_reserve": 64,
    "signal_listen_addr": "127.0.0.1:9443",
    "signal_token": SECRETS["CAIRN_SIGNAL_TOKEN"],
    "signal_token_file": None,
    "signal_announce_interval": 90.0,
    "log_level": "debug",
    "log_format": "json",
    "mgmt_exposed": True,
    "cluster_nats": ("nats://n1:4222", "tls://n2:4222"),
    "cluster_replicas": 1,
    "cluster_creds_file": "/run/secrets/cairn.creds",
    "cluster_tls_ca": "/etc/nats/tls/ca.pem",
    "cluster_prefix": "tenant-7",
    "cluster_reserve": 0,
    "identity_file": "/run/secrets/identity.key",
    "node_name": "node-2",
    "relay_attach_address": "tcp://node-2.internal:7400",
}

# One bad value per variable that is parsed or range-checked.
BAD_VALUES = {
    "CAIRN_LISTEN": "7400",
    "CAIRN_WS_LISTEN": ":7401",
    "CAIRN_MGMT_LISTEN": "tcp:",
    "CAIRN_MAX_PAYLOAD": "1023",
    "CAIRN_KEEPALIVE_INTERVAL": "30 parsecs",
    "CAIRN_KEEPALIVE_TIMEOUT": "-5s",
    "CAIRN_HANDSHAKE_TIMEOUT": "0",
    "CAIRN_MAX_HANDSHAKES_PER_SOURCE": "0",
    "CAIRN_MAX_WRITE_BUFFER": "64KiB",
    "CAIRN_UNPAIRED_SESSION_TTL": "soon",
    "CAIRN_MAX_UNPAIRED_SESSIONS": "0",
    "CAIRN_MAX_UNPAIRED_PER_SOURCE": "-1",
    "CAIRN_MAX_PENDING_PER_SOURCE": "many",
    "CAIRN_FD_RESERVE": "0",
    "CAIRN_SESSION_TTL": "forever",
    "CAIRN_MGMT_ENABLED": "maybe",
    "CAIRN_FORWARD_ENABLED": "2",
    "CAIRN_FORWARD_MAX_PER_PEER": "0",
    "CAIRN_FORWARD_MAX_AGE": "7x",
    "CAIRN_FORWARD_MAX_TOTAL": "0B",
    "CAIRN_DISK_RESERVE": "lots",
    "CAIRN_SECURE_DELETE": "off",
    "CAIRN_RELAY_CAPACITY": "0",
    "CAIRN_SYNC_ACCESS": "some",
    "CAIRN_PSK_MAX_USES": "-1",
    "CAIRN_PSK_EXPIRES": "0s",
    "CAIRN_SIGNAL_SERVERS": "ws://ok:1,http://signal:8443",
    "CAIRN_TURN_SERVERS": "turn:ok,relay:3478",
    "CAIRN_TURN_TTL": "0",
    "CAIRN_PUBLIC_ADDRESSES": "node.example:7400",
    "CAIRN_LOG_ADDRESSES": "sometimes",
    "CAIRN_SIGNAL_ANNOUNCE_INTERVAL": "5 fortnights",
    "CAIRN_LOG_LEVEL": "loud",
    "CAIRN_LOG_FORMAT": "xml",
    "CAIRN_MGMT_EXPOSED": "perhaps",
    "CAIRN_CLUSTER_NATS": "nats://ok:4222,http://n2:4222",
    "CAIRN_CLUSTER_REPLICAS": "6",
    "CAIRN_CLUSTER_PREFIX": "a.b",
    "CAIRN_CLUSTER_RESERVE": "-1MiB",
    "CAIRN_NODE_NAME": "node.2",
    "CAIRN_RELAY_ATTACH_ADDRESS": "ws://node-2/",
}


class ClusterConfigTests(unittest.TestCase):
    def test_nats_credentials_never_shown(self):
        """A password inside a CAIRN_CLUSTER_NATS URL appears neither in the config's repr nor in its error."""
        config = Config.from_env({"CAIRN_CLUSTER_NATS": "nats://cairn:hunter2@n1:4222"})
        self.assertEqual(config.cluster_nats, ("nats://cairn:hunter2@n1:4222",))
        self.assertNotIn("hunter2", repr(config))
        error = config_error(self, {"CAIRN_CLUSTER_NATS": "http://cairn:hunter2@n1:4222"})
        self.assertEqual(error.variable, "CAIRN_CLUSTER_NATS")
        self.assertNotIn("hunter2", str(error))


def config_error(test, environ, **overrides):
    """Assert that reading C{environ} fails; return the error."""
    return test.assertRaises(ConfigError, Config.from_env, environ, **overrides)


class DefaultTests(unittest.TestCase):
    """An empty environment gives the documented defaults."""

    def test_every_default(self):
        """Every setting has its documented default when no variable is set."""
        config = Config.from_env({})
        self.assertEqual(attr.asdict(config, retain_collection_types=True), DEFAULTS)

    def test_constructor_defaults(self):
        """Constructing Config with no arguments gives the same defaults."""
        self.assertEqual(Config(), Config.from_env({}))

    def test_empty_means_default(self):
        """A variable set to an empty or blank string takes its default."""
        environ = {Config.variable(name): "" for name in DEFAULTS}
        environ["CAIRN_LISTEN"] = "   "
        self.assertEqual(Config.from_env(environ), Config())

    def test_unrelated_variables_ignored(self):
        """Variables outside the CAIRN_ set are not read."""
        self.assertEqual(Config.from_env({"PATH": "/bin", "LISTEN": "x"}), Config())

    def test_frozen(self):
        """A Config cannot be changed after it is built."""
        config = Config()
        self.assertRaises(
            attr.exceptions.FrozenInstanceError, setattr, config, "psk", "x"
        )


class EnvironmentTests(unittest.TestCase):
    """Every variable is read, parsed and stored typed."""

    def test_every_non_default(self):
        """A non-default value of every variable lands typed in its attribute."""
        config = Config.from_env(NON_DEFAULT_ENV)
        self.assertEqual(
            attr.asdict(config, retain_collection_types=True), NON_DEFAULTS
        )

    def test_listeners_none(self):
        """The value none, in any case, disables each listener."""
        config = Config.from_env(
            {
                "CAIRN_LISTEN": "none",
                "CAIRN_WS_LISTEN": "NONE",
                "CAIRN_MGMT_LISTEN": " None ",
            }
        )
        self.assertEqual(
            (config.listen, config.ws_listen, config.mgmt_listen), (None, None, None)
        )

    def test_url_lists_skip_empty_items(self):
        """Blank items and a trailing comma in a URL list are skipped."""
        config = Config.from_env({"CAIRN_SIGNAL_SERVERS": " wss://a:1 ,, wss://b:2 ,"})
        self.assertEqual(config.signal_servers, ("wss://a:1", "wss://b:2"))

    def test_max_payload_bounds(self):
        """CAIRN_MAX_PAYLOAD accepts 1024 bytes and the largest u32."""
        self.assertEqual(
            Config.from_env({"CAIRN_MAX_PAYLOAD": "1KiB"}).max_payload, 1024
        )
        self.assertEqual(
            Config.from_env({"CAIRN_MAX_PAYLOAD": "4294967295"}).max_payload,
            2**32 - 1,
        )

    def test_max_payload_above_u32(self):
        """CAIRN_MAX_PAYLOAD above 4294967295 bytes is rejected."""
        error = config_error(self, {"CAIRN_MAX_PAYLOAD": "4GiB"})
        self.assertEqual(error.variable, "CAIRN_MAX_PAYLOAD")
        self.assertIn("4294967295", str(error))

    def test_durations_are_floats(self):
        """Durations given to the constructor as whole seconds are stored as floats."""
        config = Config(keepalive_interval=5, keepalive_timeout=20)
        self.assertIsInstance(config.keepalive_interval, float)
        self.assertEqual(config.keepalive_timeout, 20.0)


class KeepaliveTests(unittest.TestCase):
    """The keepalive timeout must outlast the keepalive interval."""

    def test_timeout_equal_to_interval(self):
        """A timeout equal to the interval is rejected, naming CAIRN_KEEPALIVE_TIMEOUT."""
        error = config_error(
            self, {"CAIRN_KEEPALIVE_INTERVAL": "1m", "CAIRN_KEEPALIVE_TIMEOUT": "60"}
        )
        self.assertEqual(error.variable, "CAIRN_KEEPALIVE_TIMEOUT")
        self.assertTrue(str(error).startswith("CAIRN_KEEPALIVE_TIMEOUT: "))

    def test_timeout_below_interval(self):
        """A timeout shorter than the default interval is rejected."""
        error = config_error(self, {"CAIRN_KEEPALIVE_TIMEOUT": "20s"})
        self.assertEqual(error.variable, "CAIRN_KEEPALIVE_TIMEOUT")
        self.assertIn("CAIRN_KEEPALIVE_INTERVAL", str(error))

    def test_interval_raised_above_default_timeout(self):
        """An interval above the default timeout is rejected, naming the timeout."""
        error = config_error(self, {"CAIRN_KEEPALIVE_INTERVAL": "2m"})
        self.assertEqual(error.variable, "CAIRN_KEEPALIVE_TIMEOUT")

    def test_timeout_just_above_interval(self):
        """A timeout a little longer than the interval is accepted."""
        config = Config.from_env(
            {"CAIRN_KEEPALIVE_INTERVAL": "10", "CAIRN_KEEPALIVE_TIMEOUT": "10.5"}
        )
        self.assertEqual(config.keepalive_timeout, 10.5)


class ErrorTests(unittest.TestCase):
    """A bad value stops start-up with one line naming the variable."""

    def test_each_bad_value_names_its_variable(self):
        """Each bad value gives a one-line error starting with its variable's name."""
        for variable, bad in BAD_VALUES.items():
            environ = dict(SECRETS, **{variable: bad})
            error = config_error(self, environ)
            message = str(error)
            self.assertEqual(error.variable, variable, message)
            self.assertTrue(message.startswith(f"{variable}: "), message)
            self.assertNotIn("\n", message)
            for secret in SECRETS.values():
                self.assertNotIn(secret, message)

    def test_example_message(self):
        """A bad duration is reported with the accepted forms."""
        error = config_error(self, {"CAIRN_FORWARD_MAX_AGE": "7x"})
        self.assertEqual(
            str(error),
            "CAIRN_FORWARD_MAX_AGE: '7x' is not a duration "
            "(use e.g. 30s, 15m, 12h, 7d, 2w, or plain seconds)",
        )

    def test_bad_size_shows_forms(self):
        """A bad size is reported with the accepted size forms."""
        error = config_error(self, {"CAIRN_FORWARD_MAX_TOTAL": "lots"})
        self.assertIn("'lots' is not a size", str(error))
        self.assertIn("1.5GB", str(error))

    def test_bad_url_names_item(self):
        """A bad URL in a list is named in the error, the good ones are not."""
        message = str(config_error(self, {"CAIRN_TURN_SERVERS": "turn:ok,relay:3478"}))
        self.assertIn("'relay:3478'", message)
        self.assertNotIn("turn:ok", message)

    def test_bad_url_error_hides_credentials(self):
        """A bad URL's error names it without its query, fragment or user:password (they may hold a token)."""
        for raw in ("https://signal.example/s?token=hunter2", "http://cairn:hunter2@signal.example/#hunter2"):
            error = config_error(self, {"CAIRN_SIGNAL_SERVERS": raw})
            self.assertEqual(error.variable, "CAIRN_SIGNAL_SERVERS")
            self.assertNotIn("hunter2", str(error))
            self.assertIn("signal.example", str(error))
        error = self.assertRaises(ConfigError, Config, turn_servers=["relay:3478?secret=hunter2"])
        self.assertNotIn("hunter2", str(error))

    def test_bare_scheme_rejected(self):
        """A URL that is only a scheme is rejected."""
        error = config_error(self, {"CAIRN_SIGNAL_SERVERS": "wss://"})
        self.assertEqual(error.variable, "CAIRN_SIGNAL_SERVERS")

    def test_constructor_validates(self):
        """Constructing a Config directly checks values like reading the environment."""
        error = self.assertRaises(ConfigError, Config, max_payload=10)
        self.assertEqual(error.variable, "CAIRN_MAX_PAYLOAD")
        error = self.assertRaises(ConfigError, Config, listen="7400")
        self.assertEqual(error.variable, "CAIRN_LISTEN")
        error = self.assertRaises(ConfigError, Config, signal_servers=["http://x"])
        self.assertEqual(error.variable, "CAIRN_SIGNAL_SERVERS")

    def test_count_not_a_number(self):
        """A count that is not plain digits is reported with an example."""
        error = config_error(self, {"CAIRN_FORWARD_MAX_PER_PEER": "1e3"})
        self.assertEqual(
            str(error),
            "CAIRN_FORWARD_MAX_PER_PEER: '1e3' is not a whole number (use e.g. 10000)",
        )

    def test_constructor_checks_types(self):
        """Constructing a Config with a string for a boolean or a size is rejected."""
        error = self.assertRaises(ConfigError, Config, mgmt_enabled="yes")
        self.assertEqual(error.variable, "CAIRN_MGMT_ENABLED")
        error = self.assertRaises(ConfigError, Config, max_payload="1MB")
        self.assertEqual(error.variable, "CAIRN_MAX_PAYLOAD")
        error = self.assertRaises(ConfigError, Config, max_payload=4096.0)
        self.assertEqual(error.variable, "CAIRN_MAX_PAYLOAD")

    def test_bad_secret_type_not_shown(self):
        """A secret of the wrong type is rejected without showing its value."""
        error = self.assertRaises(ConfigError, Config, psk=b"psk-bytes-SECRET")
        self.assertEqual(error.variable, "CAIRN_PSK")
        self.assertNotIn("SECRET", str(error))


class SecretTests(unittest.TestCase):
    """Secrets are kept, but never shown."""

    def test_repr_hides_secrets(self):
        """The repr of a Config says a secret is set without showing it."""
        text = repr(Config.from_env(NON_DEFAULT_ENV))
        for secret in SECRETS.values():
            self.assertNotIn(secret, text)
        self.assertIn("psk='<redacted>'", text)
        self.assertIn("mgmt_token='<redacted>'", text)
        self.assertIn("turn_secret='<redacted>'", text)

    def test_repr_shows_unset_secrets(self):
        """The repr of a Config shows an unset secret as None."""
        self.assertIn("psk=None", repr(Config()))


class OverrideTests(unittest.TestCase):
    """Typed flag values beat the environment, which beats the default."""

    def test_flag_beats_env(self):
        """An override replaces the value of its variable."""
        config = Config.from_env(
            {"CAIRN_MAX_PAYLOAD": "2MB", "CAIRN_DATA_DIR": "/env"},
            max_payload=4096,
        )
        self.assertEqual((config.max_payload, config.data_dir), (4096, "/env"))

    def test_flag_hides_bad_env(self):
        """A bad variable is not read when an override replaces it."""
        config = Config.from_env({"CAIRN_MAX_PAYLOAD": "huge"}, max_payload=4096)
        self.assertEqual(config.max_payload, 4096)

    def test_listener_override_none(self):
        """A listener override of "none" or None disables that listener."""
        config = Config.from_env(
            {"CAIRN_LISTEN": "tcp:1"}, listen="none", ws_listen=None
        )
        self.assertEqual((config.listen, config.ws_listen), (None, None))

    def test_listener_override_checked(self):
        """A malformed listener override is rejected, naming its variable."""
        error = config_error(self, {}, mgmt_listen="9090")
        self.assertEqual(error.variable, "CAIRN_MGMT_LISTEN")

    def test_override_range_checked(self):
        """An out-of-range override is rejected, naming its variable."""
        error = config_error(self, {}, keepalive_interval=0.0)
        self.assertEqual(error.variable, "CAIRN_KEEPALIVE_INTERVAL")

    def test_unknown_override(self):
        """An override that names no setting is a programming error."""
        self.assertRaises(TypeError, Config.from_env, {}, max_paylod=1)


class TokenFileTests(unittest.TestCase):
    """CAIRN_MGMT_TOKEN_FILE supplies the management token from a file."""

    def token_file(self, content):
        """Write C{content} to a fresh file readable only by its owner."""
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        return path

    def test_token_read_and_stripped(self):
        """The token is the file's content without surrounding whitespace."""
        path = self.token_file("  file-token-SECRET\n")
        config = Config.from_env({"CAIRN_MGMT_TOKEN_FILE": path})
        self.assertEqual(config.mgmt_token, "file-token-SECRET")
        self.assertEqual(config.mgmt_token_file, path)
        self.assertNotIn("file-token-SECRET", repr(config))

    def test_both_set(self):
        """Setting both the token and the token file is an error naming both."""
        path = self.token_file("file-token-SECRET")
        error = config_error(
            self,
            {"CAIRN_MGMT_TOKEN": "env-token-SECRET", "CAIRN_MGMT_TOKEN_FILE": path},
        )
        message = str(error)
        self.assertIn("CAIRN_MGMT_TOKEN ", message)
        self.assertIn("CAIRN_MGMT_TOKEN_FILE", message)
        self.assertNotIn("SECRET", message)

    def test_missing_file(self):
        """An unreadable token file is an error naming the variable and the path."""
        path = self.mktemp()
        error = config_error(self, {"CAIRN_MGMT_TOKEN_FILE": path})
        self.assertEqual(error.variable, "CAIRN_MGMT_TOKEN_FILE")
        self.assertIn(repr(path), str(error))

    def test_empty_file(self):
        """A token file holding only whitespace is an error naming the path."""
        path = self.token_file(" \n")
        error = config_error(self, {"CAIRN_MGMT_TOKEN_FILE": path})
        self.assertEqual(error.variable, "CAIRN_MGMT_TOKEN_FILE")
        self.assertIn("empty", str(error))

    def test_binary_file(self):
        """A token file that is not UTF-8 is an error that does not show its bytes."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\xff\xfeSECRET")
        message = str(config_error(self, {"CAIRN_MGMT_TOKEN_FILE": path}))
        self.assertIn("not UTF-8", message)
        self.assertNotIn("SECRET", message)
        self.assertNotIn("xff", message)


class ParseSizeTests(unittest.TestCase):
    """parse_size reads plain bytes and decimal or binary units."""

    def test_table(self):
        """Each accepted spelling gives its number of bytes."""
        table = {
            "0": 0,
            "1024": 1024,
            " 17 ": 17,
            "5B": 5,
            "1KB": 1000,
            "1kb": 1000,
            "1 MB": 1_000_000,
            "1GB": 10**9,
            "2TB": 2 * 10**12,
            "1KiB": 1024,
            "1kib": 1024,
            "1 MiB": 2**20,
            "1GiB": 2**30,
            "1TiB": 2**40,
            "1.5GB": 1_500_000_000,
            "1.5KiB": 1536,
            "0.5 MiB": 2**19,
        }
        for text, expected in table.items():
            self.assertEqual(parse_size(text), expected, text)

    def test_rejected(self):
        """Malformed sizes, unknown units and fractions of a byte raise ValueError."""
        for text in [
            "",
            "MB",
            "-1",
            "1e6",
            "1,000",
            "1 XB",
            "1.5",
            "1.1B",
            "1.0001KB",
            "1 M B",
            "١٠٠",
        ]:
            self.assertRaises(ValueError, parse_size, text)

    @given(st.integers(min_value=0, max_value=2**64))
    def test_plain_bytes_round_trip(self, n):
        """Any whole number of bytes written plainly parses back to itself."""
        self.assertEqual(parse_size(str(n)), n)

    @given(st.integers(min_value=0, max_value=2**32))
    def test_kib(self, n):
        """A number of KiB is that many times 1024 bytes."""
        self.assertEqual(parse_size(f"{n}KiB"), n * 1024)


class ParseDurationTests(unittest.TestCase):
    """parse_duration reads seconds, or a number with a unit."""

    def test_table(self):
        """Each accepted spelling gives its number of seconds."""
        table = {
            "0": 0.0,
            "45": 45.0,
            "2.5": 2.5,
            "500ms": 0.5,
            "30s": 30.0,
            "30S": 30.0,
            "15m": 900.0,
            "12h": 43200.0,
            "1.5h": 5400.0,
            "7d": 604800.0,
            "2w": 1209600.0,
            " 3 m ": 180.0,
        }
        for text, expected in table.items():
            self.assertEqual(parse_duration(text), expected, text)

    def test_float(self):
        """A parsed duration is a float."""
        self.assertIsInstance(parse_duration("7d"), float)

    def test_rejected(self):
        """Malformed durations and unknown units raise ValueError."""
        for text in [
            "",
            "s",
            "-1s",
            "7x",
            "1y",
            "1h30m",
            "1e3",
            "inf",
            "nan",
            "9" * 400,
        ]:
            self.assertRaises(ValueError, parse_duration, text)


class ParseBoolTests(unittest.TestCase):
    """parse_bool reads the usual spellings of yes and no."""

    def test_table(self):
        """Each accepted spelling, in any case, gives its boolean."""
        for text in ["true", "TRUE", "yes", "Yes", "on", "1", " true "]:
            self.assertIs(parse_bool(text), True, text)
        for text in ["false", "False", "no", "NO", "off", "0"]:
            self.assertIs(parse_bool(text), False, text)

    def test_rejected(self):
        """Anything else raises ValueError listing the accepted spellings."""
        for text in ["", "y", "n", "2", "enabled", "truee"]:
            error = self.assertRaises(ValueError, parse_bool, text)
            self.assertIn("true/false", str(error))


class ParseEndpointTests(unittest.TestCase):
    """parse_endpoint checks the shape of an endpoint string."""

    def test_accepted(self):
        """Endpoint strings of any type are accepted, stripped, and none gives None."""
        for text in [
            "tcp:7400",
            "tcp:port=7400:interface=127.0.0.1",
            "tcp6:7400:interface=\\:\\:1",
            "unix:/run/cairn.sock",
            "systemd:domain=INET:index=0",
            "ssl:443:privateKey=key.pem",
        ]:
            self.assertEqual(parse_endpoint(f" {text} "), text)
        self.assertIsNone(parse_endpoint("none"))

    def test_rejected(self):
        """Strings without a type before a colon raise ValueError."""
        for text in ["", "7400", ":7400", "tcp:", "tcp: 7400", "1tcp:7400"]:
            self.assertRaises(ValueError, parse_endpoint, text)
