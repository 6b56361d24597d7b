"""
The deployment files under C{docker/}: what can be checked without a Docker
engine or a systemd PID 1, plus a real run under C{systemd-socket-activate}.
"""

import json
import os
import re
import shlex
import shutil
import socket
import sys
from urllib.parse import urlsplit

import attr
import yaml
from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor, task, utils
from twisted.internet.protocol import ProcessProtocol
from twisted.plugin import getPlugins
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from cairn.client import Client
from cairn.config import Config
from cairn.crypto.identity import load_or_create
from cairn.healthcheck import health_url
from tests import _nats
from tests._harness import eventually, track_connections
from tests.test_twistd import REPO, TwistdProcess, kill_at_end

DOCKER = os.path.join(REPO, "docker")
SYSTEMD = os.path.join(DOCKER, "systemd")

#: Every environment variable the code reads.
VARIABLES = frozenset(Config.variable(field.name) for field in attr.fields(Config))


def _read(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return f.read()


def _plugin(tapname):
    """The twistd plugin called C{tapname}, or C{None}."""
    for maker in getPlugins(IServiceMaker):
        if maker.tapname == tapname:
            return maker
    return None


def _twistd_accepts(test, argv, environ):
    """Parse a twistd command line (after C{twistd}) as twistd would, with C{environ} set."""
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    clean.update(environ)
    test.patch(os, "environ", clean)
    options = ServerOptions()
    options.parseOptions(argv)
    return options


# -- Dockerfile ---------------------------------------------------------------


def dockerfile_instructions(text):
    """[(INSTRUCTION, arguments)] of a Dockerfile: comments dropped, continuations joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _one(instructions, keyword):
    found = [rest for kw, rest in instructions if kw == keyword]
    return found[-1] if found else None


def _healthcheck():
    """The argv of the image's HEALTHCHECK command."""
    check = _one(dockerfile_instructions(_read(DOCKER, "Dockerfile")), "HEALTHCHECK")
    return json.loads(check.partition("CMD")[2]) if check else None


def _env(instructions):
    env = {}
    for rest in (rest for kw, rest in instructions if kw == "ENV"):
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


class DockerfileTests(unittest.TestCase):
    def setUp(self):
        self.instructions = dockerfile_instructions(_read(DOCKER, "Dockerfile"))

    def test_base_image(self):
        """The image is built from python:3.11-slim."""
        self.assertEqual(self.instructions[0], ("FROM", "python:3.11-slim"))

    def test_data_volume(self):
        """The data directory is /data, declared a volume."""
        self.assertEqual(_env(self.instructions)["CAIRN_DATA_DIR"], "/data")
        self.assertEqual(_one(self.instructions, "VOLUME"), "/data")

    def test_env_read_by_code(self):
        """Every CAIRN_* variable the image sets is one the code reads."""
        cairn = {name for name in _env(self.instructions) if name.startswith("CAIRN_")}
        self.assertEqual(cairn - VARIABLES, set())

    def test_management_reachable_from_host(self):
        """The management API listens on all interfaces of the container, on 9090."""
        self.assertEqual(_env(self.instructions)["CAIRN_MGMT_LISTEN"], "tcp:9090")

    def test_non_root_user(self):
        """The node runs as a named non-root user, and /data is chowned to it before VOLUME."""
        user = _one(self.instructions, "USER")
        self.assertNotIn(user.split(":")[0], (None, "", "root", "0"))
        keywords = [kw for kw, _ in self.instructions]
        chown = next(i for i, (kw, rest) in enumerate(self.instructions) if f"chown {user}" in rest)
        self.assertLess(chown, keywords.index("VOLUME"))

    def test_exposed_ports(self):
        """Management (9090) and both protocol ports (7400, 7401) are exposed."""
        self.assertEqual(set(_one(self.instructions, "EXPOSE").split()), {"9090", "7400", "7401"})

    def test_healthcheck_asks_health(self):
        """
        The HEALTHCHECK runs cairn.healthcheck, which asks GET /health where
        the image's CAIRN_MGMT_LISTEN listens (tests/test_healthcheck.py: its
        status, TLS, a degraded node).
        """
        argv = _healthcheck()
        self.assertEqual(argv, ["python", "-m", "cairn.healthcheck"])
        environ = {**_env(self.instructions), "CAIRN_DATA_DIR": os.path.abspath(self.mktemp())}
        self.assertEqual(health_url(environ), "http://127.0.0.1:9090/health")

    def test_plugin_cache_built(self):
        """The build step writes the twistd plugin cache while still root, newer than every plugin file."""
        run = " ".join(rest for kw, rest in self.instructions if kw == "RUN")
        self.assertIn("getPlugins(IPlugin)", run)
        # The plugin files are dated back before the cache is built ...
        self.assertLess(run.index("touch -d '2000-01-01"), run.index("getPlugins(IPlugin)"))
        # ... and the runtime user then finds nothing to rewrite.
        self.assertIn("os.setuid(10001)", run)
        self.assertIn("'plugin cache'", run)

    def test_group_id(self):
        """The cairn group is gid 10001, as docs/deployment.md says (not a system-picked gid)."""
        run = " ".join(rest for kw, rest in self.instructions if kw == "RUN")
        self.assertIn("groupadd --system --gid 10001 cairn", run)
        self.assertIn("--uid 10001 --gid 10001", run)
        self.assertNotIn("--user-group", run)
        self.assertIn("uid/gid 10001", _read(REPO, "docs", "deployment.md"))

    def test_management_exposure_intended(self):
        """The image says its management binding is intended, so the node does not warn about it."""
        self.assertEqual(_env(self.instructions)["CAIRN_MGMT_EXPOSED"], "true")
        config = Config.from_env(_env(self.instructions))
        self.assertTrue(config.mgmt_exposed)

    def test_cmd_runs(self):
        """The CMD is `twistd ... cairn`, and twistd accepts it with the image's environment."""
        argv = json.loads(_one(self.instructions, "CMD"))
        self.assertEqual(argv, ["twistd", "--nodaemon", "--pidfile=", "cairn"])
        self.assertIsNotNone(_plugin("cairn"))
        options = _twistd_accepts(self, argv[1:], _env(self.instructions))
        self.assertEqual(options.subCommand, "cairn")
        self.assertTrue(options["nodaemon"])


# -- the build context ---------------------------------------------------------

#: What trying the node out in a checkout leaves behind (the walkthrough,
#: docs/deployment.md), each holding a secret that must not reach an image.
PLANTED = {
    "phone.key": b"PLANTED-SECRET-1",
    "laptop.key": b"PLANTED-SECRET-2",
    "cairn.log": b"PLANTED-SECRET-3",
    "twistd.log": b"PLANTED-SECRET-4",
    "docker/.env": b"CAIRN_TURN_SECRET=PLANTED-SECRET-5\nCAIRN_MGMT_TOKEN=PLANTED-SECRET-6\n",
    "cairn-data/identity.key": b"PLANTED-SECRET-7",
    "cairn-data/mgmt.token": b"PLANTED-SECRET-8",
    "cairn-data/cairn.sqlite": b"PLANTED-SECRET-9",
    "data/mgmt.token": b"PLANTED-SECRET-10",
    ".venv/lib/site.key": b"PLANTED-SECRET-11",
    "cairn/oops.key": b"PLANTED-SECRET-12",
    "tests/_trial_temp/node/identity.key": b"PLANTED-SECRET-13",
    ".env": b"PLANTED-SECRET-14",
}


def _copy_tracked(root):
    """Copy the files git tracks in the checkout to C{root}; fires when done."""

    def copy(output):
        for name in output.decode().split("\0"):
            if name and os.path.isfile(os.path.join(REPO, name)):
                os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
                shutil.copy(os.path.join(REPO, name), os.path.join(root, name))

    return utils.getProcessOutput("git", ["ls-files", "-z"], env=os.environ, path=REPO).addCallback(copy)


class WheelTests(unittest.TestCase):
    """docs/deployment.md's install from a wheel: `python -m build`, a clean venv, `twistd cairn --help`."""

    def setUp(self):
        try:
            import build  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("the build package is missing: pip install '.[test]'") from None

    @defer.inlineCallbacks
    def run_ok(self, executable, argv, cwd):
        out, err, code = yield utils.getProcessOutputAndValue(executable, argv, env=self.env, path=cwd)
        self.assertEqual(code, 0, (argv, out, err))
        return out.decode()

    @defer.inlineCallbacks
    def test_wheel_installs_and_runs(self):
        """The wheel holds the plugin and the schemas; installed in a new venv, twistd finds `cairn`."""
        import sysconfig
        import zipfile

        root = os.path.abspath(self.mktemp())
        src, dist, venv = (os.path.join(root, name) for name in ("src", "dist", "clean"))
        yield _copy_tracked(src)
        # No PYTHONPATH: nothing may come from the checkout.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("CAIRN_")}
        # --no-isolation: the test does not download setuptools (hermetic).
        yield self.run_ok(sys.executable, ["-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src], src)
        (wheel,) = os.listdir(dist)
        names = zipfile.ZipFile(os.path.join(dist, wheel)).namelist()
        self.assertIn("twisted/plugins/cairn_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertTrue([n for n in names if n.startswith("cairn/") and n.endswith(".sql")])

        yield self.run_ok(sys.executable, ["-m", "venv", "--without-pip", venv], root)
        python = os.path.join(venv, "bin", "python")
        yield self.run_ok(
            sys.executable,
            ["-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
             os.path.join(dist, wheel)],
            root,
        )
        # The dependencies come from this test's environment (no network);
        # cairn itself only from the wheel, whose site-packages comes first.
        site = (yield self.run_ok(python, ["-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root))
        with open(os.path.join(site.strip(), "zz_test_deps.pth"), "w", encoding="utf-8") as f:
            f.write(sysconfig.get_path("purelib") + "\n")
        where = yield self.run_ok(python, ["-c", "import cairn; print(cairn.__file__)"], root)
        self.assertTrue(where.startswith(venv), where)
        # `twistd cairn --help`: twistd's own script lives with Twisted, outside this venv.
        twistd = ["-c", "from twisted.scripts.twistd import run; run()"]
        usage = yield self.run_ok(python, [*twistd, "cairn", "--help"], root)
        self.assertIn("CAIRN_LOG_LEVEL", usage)
        version = yield self.run_ok(os.path.join(venv, "bin", "cairn-server"), ["--version"], root)
        self.assertEqual(version.strip(), f"cairn-server {__import__('cairn').__version__}")


class DockerContextTests(unittest.TestCase):
    """The files `docker build .` sends, worked out with docker-py's own .dockerignore rules."""

    def test_no_secret_in_context(self):
        """After a walkthrough's keys, logs, docker/.env and data directories appear, none is in the context."""
        from docker.utils.build import exclude_paths

        root = self.mktemp()

        def build(_):
            for name, content in PLANTED.items():
                os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
                with open(os.path.join(root, name), "wb") as f:
                    f.write(content)
            with open(os.path.join(root, ".dockerignore"), encoding="utf-8") as f:
                patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
            context = exclude_paths(root, patterns)
            files = [p for p in context if os.path.isfile(os.path.join(root, p))]
            leaked = []
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    if b"PLANTED-SECRET" in f.read():
                        leaked.append(name)
            self.assertEqual(leaked, [])
            self.assertEqual([p for p in files if p.endswith((".key", ".log", ".env", ".token"))], [])
            # What the image needs is there.
            for needed in ["pyproject.toml", "setup.py", "setup.cfg", "README.rst", "cairn/__init__.py",
                           "cairn/db.py", "twisted/plugins/cairn_plugin.py"]:
                self.assertIn(needed, context)
            self.assertTrue([p for p in files if p.endswith(".sql")])

        return _copy_tracked(root).addCallback(build)

    def test_env_file_not_committed(self):
        """docker/.env is git-ignored, as docs/deployment.md says."""
        d = utils.getProcessOutputAndValue("git", ["check-ignore", "-q", "docker/.env"], env=os.environ, path=REPO)
        return d.addCallback(lambda result: self.assertEqual(result[2], 0, result))


# -- docker-compose.yml -------------------------------------------------------


class ComposeTests(unittest.TestCase):
    def setUp(self):
        self.compose = yaml.safe_load(_read(DOCKER, "docker-compose.yml"))
        self.services = self.compose["services"]

    def test_three_services(self):
        """The stack has the seed's three services."""
        self.assertEqual(set(self.services), {"signaling", "relay", "server"})

    def test_server_build(self):
        """The server is built from the repository root with docker/Dockerfile."""
        build = self.services["server"]["build"]
        self.assertEqual(os.path.normpath(os.path.join(DOCKER, build["context"])), REPO)
        self.assertTrue(os.path.isfile(os.path.join(REPO, build["dockerfile"])))

    def test_server_environment_read_by_code(self):
        """Every variable given to the server is one the code reads."""
        self.assertEqual(set(self.services["server"]["environment"]) - VARIABLES, set())

    def test_server_seed_values(self):
        """The server gets the seed's signaling, TURN and management settings."""
        env = self.services["server"]["environment"]
        self.assertEqual(env["CAIRN_SIGNAL_SERVERS"], "ws://signaling:8443")
        self.assertEqual(env["CAIRN_TURN_SERVERS"], "turn:relay:3478")
        self.assertEqual(env["CAIRN_MGMT_ENABLED"], "true")
        literal = {k: v for k, v in env.items() if "${" not in v}
        Config.from_env(literal)

    def test_server_port_and_volume(self):
        """The server publishes 9090 and keeps /data in the named volume server-data."""
        server = self.services["server"]
        self.assertIn("9090:9090", server["ports"])
        self.assertIn("server-data:/data", server["volumes"])
        self.assertIn("server-data", self.compose["volumes"])

    def test_secrets_not_in_file(self):
        """Secrets come from the environment of `docker compose`, never from the file."""
        env = self.services["server"]["environment"]
        for name in ("CAIRN_TURN_SECRET", "CAIRN_MGMT_TOKEN", "CAIRN_PSK"):
            if name in env:
                self.assertRegex(env[name], r"^\$\{" + name + r"[:}]")
        relay = " ".join(self.services["relay"]["command"])
        self.assertIn("--static-auth-secret=${CAIRN_TURN_SECRET:?", relay)

    def test_relay_is_coturn(self):
        """The relay is coturn with docker/turnserver.conf mounted as its configuration."""
        relay = self.services["relay"]
        self.assertTrue(relay["image"].startswith("coturn/coturn"))
        mounted = {v.split(":")[0]: v.split(":")[1] for v in relay["volumes"]}
        self.assertEqual(mounted["./turnserver.conf"], "/etc/coturn/turnserver.conf")
        self.assertIn("3478:3478/udp", relay["ports"])

    def test_turnserver_conf(self):
        """The coturn configuration uses the TURN REST API secret on port 3478, without a CLI."""
        lines = [
            line.strip()
            for line in _read(DOCKER, "turnserver.conf").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        for needed in ("use-auth-secret", "listening-port=3478", "no-cli", "fingerprint"):
            self.assertIn(needed, lines)
        self.assertTrue(any(line.startswith("realm=") for line in lines))
        self.assertFalse(any(line.startswith("static-auth-secret") for line in lines))

    def test_signaling_service(self):
        """The signaling service runs this image's `twistd cairn-signal` on 0.0.0.0:8443."""
        signaling = self.services["signaling"]
        self.assertEqual(signaling["build"], self.services["server"]["build"])
        self.assertEqual(signaling["command"], ["twistd", "--nodaemon", "--pidfile=", "cairn-signal"])
        self.assertEqual(signaling["environment"]["CAIRN_SIGNAL_LISTEN_ADDR"], "0.0.0.0:8443")
        self.assertEqual(signaling["healthcheck"], {"disable": True})
        if _plugin("cairn-signal") is None:
            raise unittest.SkipTest("the cairn-signal twistd plugin is not written yet (issue 6)")


# -- systemd units ------------------------------------------------------------


def unit_entries(text):
    """[(section, key, value)] of a systemd unit file, repeated keys kept in order."""
    entries, section, pending = [], None, ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        stripped, pending = pending + stripped, ""
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        key, equals, value = stripped.partition("=")
        if not equals or section is None:
            raise ValueError(f"not a unit file line: {line!r}")
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(entries, section, key):
    return [v for s, k, v in entries if s == section and k == key]


def _unit_environment(entries):
    env = {}
    for value in _values(entries, "Service", "Environment"):
        for pair in shlex.split(value):
            name, _, val = pair.partition("=")
            env[name] = val
    return env


#: The units' ExecStart program: the virtual environment docs/deployment.md installs into.
VENV_TWISTD = "/opt/cairn/venv/bin/twistd"
#: The units' ExecReload: the shell's kill (no /bin/kill from procps needed).
EXEC_RELOAD = "/bin/sh -c 'kill -HUP $MAINPID'"

HARDENING = {
    "DynamicUser": "yes",
    "StateDirectory": "cairn",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "CapabilityBoundingSet": "",
    "MemoryDenyWriteExecute": "yes",
    "LockPersonality": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "UMask": "0077",
}


class SystemdUnitTests(unittest.TestCase):
    def setUp(self):
        self.service = unit_entries(_read(SYSTEMD, "cairn-server.service"))
        self.socket = unit_entries(_read(SYSTEMD, "cairn-server.socket"))

    def test_hardening(self):
        """The service sets every hardening option, each exactly once, to the expected value."""
        for key, value in HARDENING.items():
            self.assertEqual(_values(self.service, "Service", key), [value], key)
        self.assertIn("@system-service", _values(self.service, "Service", "SystemCallFilter"))

    def test_environment(self):
        """The service keeps its data in its StateDirectory and takes the TCP socket from systemd."""
        env = _unit_environment(self.service)
        self.assertEqual(env["CAIRN_DATA_DIR"], "/var/lib/cairn")
        self.assertEqual(env["CAIRN_LISTEN"], "systemd:domain=INET6:index=0")
        self.assertEqual({n for n in env if n.startswith("CAIRN_")} - VARIABLES, set())

    def test_exec_start(self):
        """ExecStart runs `twistd --nodaemon --pidfile= cairn`, which twistd accepts with the unit's environment."""
        (command,) = _values(self.service, "Service", "ExecStart")
        argv = shlex.split(command)
        self.assertEqual(argv, [VENV_TWISTD, "--nodaemon", "--pidfile=", "cairn"])
        options = _twistd_accepts(self, argv[1:], _unit_environment(self.service))
        self.assertEqual(options.subCommand, "cairn")

    def test_exec_reload(self):
        """`systemctl reload` sends SIGHUP to the node (which re-reads its token and log files)."""
        self.assertEqual(_values(self.service, "Service", "ExecReload"), [EXEC_RELOAD])

    def test_socket(self):
        """The socket unit listens on [::]:7400 (dual-stack) and 127.0.0.1:9090, and activates cairn-server.service."""
        self.assertEqual(_values(self.socket, "Socket", "ListenStream"), ["[::]:7400", "127.0.0.1:9090"])
        env = _unit_environment(self.service)
        self.assertEqual(env["CAIRN_MGMT_LISTEN"], "systemd:domain=INET:index=1")
        self.assertEqual(_values(self.socket, "Socket", "BindIPv6Only"), ["both"])
        self.assertEqual(_values(self.socket, "Socket", "Service"), ["cairn-server.service"])
        self.assertEqual(_values(self.socket, "Install", "WantedBy"), ["sockets.target"])
        self.assertEqual(_values(self.service, "Unit", "Requires"), ["cairn-server.socket"])


# -- socket activation, for real ----------------------------------------------


class SocketActivationTests(unittest.TestCase):
    def setUp(self):
        self.activate = shutil.which("systemd-socket-activate")
        if self.activate is None:
            raise unittest.SkipTest("systemd-socket-activate not found: apt-get install systemd")

    @defer.inlineCallbacks
    def test_activated_socket(self):
        """twistd cairn handshakes on the socket systemd-socket-activate passes it; /health passes the HEALTHCHECK."""
        data_dir = os.path.abspath(self.mktemp())
        port = _nats.free_port()
        # An IPv4 socket here, so domain=INET (the unit's [::] socket is INET6).
        settings = {
            "CAIRN_DATA_DIR": data_dir,
            "CAIRN_LISTEN": "systemd:domain=INET:index=0",
            "CAIRN_WS_LISTEN": "none",
            "CAIRN_MGMT_LISTEN": "tcp:0:interface=127.0.0.1",
            "PYTHONPATH": REPO,
        }
        # systemd always sets LISTEN_FDNAMES (the socket unit's name by
        # default), and Twisted ignores LISTEN_FDS without it.
        argv = [self.activate, "-l", f"127.0.0.1:{port}", "--fdname=cairn-server.socket"]
        argv += [f"-E{name}={value}" for name, value in settings.items()]
        argv += [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "cairn",
        ]
        proc = TwistdProcess({"tcp", "management"})
        reactor.spawnProcess(proc, argv[0], argv, env=dict(os.environ), path=REPO)
        self.addCleanup(kill_at_end, proc)

        # systemd-socket-activate binds the port, then starts twistd on the
        # first connection to it.
        yield self._output(proc, f"Listening on 127.0.0.1:{port}")
        client = Client(reactor, clock=task.Clock())
        track_connections(client.peer, [])
        session = yield eventually(client.connect(f"tcp:host=127.0.0.1:port={port}"), 60)
        ports = yield eventually(proc.listening, 60)
        log = "".join(proc.output)
        self.assertEqual(ports["tcp"], port, log)
        self.assertEqual(session.remote_peer_id, load_or_create(data_dir).peer_id)

        argv = _healthcheck()
        self.assertEqual(argv[0], "python")
        env = {**os.environ, **settings, "CAIRN_MGMT_LISTEN": f"tcp:{ports['management']}:interface=127.0.0.1"}
        status = yield utils.getProcessValue(sys.executable, argv[1:], env=env, path=REPO)
        self.assertEqual(status, 0)

        lost = session.connection.lost
        proc.transport.signalProcess("TERM")
        status = yield eventually(proc.ended, 60)
        log = "".join(proc.output)
        self.assertIn(status, [(0, None), (None, 15)], log)
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        yield eventually(lost)

    @defer.inlineCallbacks
    def test_management_socket_activates(self):
        """A `cairn-server pair --pin` on the activated management socket starts the node and gets a PIN."""
        data_dir = os.path.abspath(self.mktemp())
        port, mgmt = _nats.free_port(), _nats.free_port()
        settings = {
            "CAIRN_DATA_DIR": data_dir,
            "CAIRN_LISTEN": "systemd:domain=INET:index=0",
            "CAIRN_WS_LISTEN": "none",
            "CAIRN_MGMT_LISTEN": "systemd:domain=INET:index=1",
            "PYTHONPATH": REPO,
        }
        argv = [self.activate, "-l", f"127.0.0.1:{port}", "-l", f"127.0.0.1:{mgmt}",
                "--fdname=cairn-server.socket:cairn-server.socket"]
        argv += [f"-E{name}={value}" for name, value in settings.items()]
        argv += [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "--nodaemon", "--pidfile=", "--logfile=-", "cairn"]
        proc = TwistdProcess({"tcp", "management"})
        reactor.spawnProcess(proc, argv[0], argv, env=dict(os.environ), path=REPO)
        self.addCleanup(kill_at_end, proc)
        yield self._output(proc, f"Listening on 127.0.0.1:{mgmt}")
        self.assertFalse(os.path.exists(os.path.join(data_dir, "mgmt.token")))

        # The operator's shell: the node's data dir, the default-style loopback address, no token.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
        env.update(PYTHONPATH=REPO, CAIRN_DATA_DIR=data_dir, CAIRN_MGMT_LISTEN=f"tcp:{mgmt}:interface=127.0.0.1")
        out, err, code = yield eventually(
            utils.getProcessOutputAndValue(sys.executable, ["-m", "cairn.cli", "pair", "--pin"], env=env, path=REPO),
            60,
        )
        self.assertEqual(code, 0, err + "".join(proc.output).encode())
        self.assertRegex(out.decode(), r"^[0-9A-Z]{4}-[0-9A-Z]{4}\n")
        ports = yield eventually(proc.listening, 60)
        self.assertEqual(ports, {"tcp": port, "management": mgmt})
        proc.transport.signalProcess("TERM")
        yield eventually(proc.ended, 60)
        self.assertNotIn("Traceback", "".join(proc.output))

    def _output(self, proc, text, timeout=30):
        """Wait until C{text} appears in the output of C{proc} (fails if it never does)."""

        def missing(failure):
            self.fail(f"no {text!r} in:\n" + "".join(proc.output))

        return eventually(proc.wait_for(text), timeout).addErrback(missing)


# -- docker-compose.cluster.yml (issue 15) ------------------------------------

#: Variables the cluster-node work adds to Config (CAIRN_IDENTITY_FILE,
#: CAIRN_NODE_NAME); until that is merged they are the only names the
#: cluster files may use that the code does not read yet.
CLUSTER_VARIABLES = frozenset({"CAIRN_IDENTITY_FILE", "CAIRN_NODE_NAME"})
NATS_SERVICES = ("nats1", "nats2", "nats3")
CAIRN_NODES = ("server", "server2")
#: Names of variables that hold a secret (their values must not be in the file).
SECRET_NAME = re.compile(r"TOKEN|SECRET|PSK|PASSWORD|CREDS|KEY|SEED")


def _host_ports(service):
    """The host ports a compose service publishes (as strings, with /proto if given)."""
    found = []
    for item in service.get("ports", []):
        host = str(item).rsplit(":", 1)[0].split(":")[-1] if ":" in str(item) else str(item)
        proto = str(item).partition("/")[2]
        found.append(f"{host}/{proto or 'tcp'}")
    return found


#: Where systemd puts nats-server.service's credentials (LoadCredential=).
NATS_CREDENTIALS = "/run/credentials/nats-server.service"


def nats_conf_with_credentials(directory, conf):
    """
    Write C{conf} (a nats-server.conf) into C{directory} with its TLS files
    where nats-server.service's C{LoadCredential=} lines would put them,
    moved to C{directory/credentials}: a self-signed certificate for
    localhost and 127.0.0.1, which is also the authority.  Returns the
    config's path; the certificate is C{directory/credentials/ca.pem}.
    """
    from tests.test_mgmt_tls import self_signed

    credentials = os.path.join(directory, "credentials")
    os.makedirs(credentials)
    key, cert = self_signed(directory)
    made = {"ca.pem": cert, "server.pem": cert, "server-key.pem": key}
    for entry in _values(unit_entries(_read(SYSTEMD, "nats-server.service")), "Service", "LoadCredential"):
        name, source = entry.split(":", 1)
        shutil.copy(made[os.path.basename(source)], os.path.join(credentials, name))
    path = os.path.join(directory, "nats-server.conf")
    with open(path, "w") as f:
        f.write(conf.replace(NATS_CREDENTIALS, credentials))
    return path


def nats_conf(text):
    """
    The settings of a NATS config file as {dotted.key: value}, for the
    subset this repository's files use (key: value lines, blocks in
    braces, a list in brackets); comments dropped.
    """
    settings, stack, listing = {}, [], None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if listing is not None:
            if line == "]":
                settings[".".join(stack + [listing[0]])] = listing[1]
                listing = None
            else:
                listing[1].append(line)
            continue
        if line == "}":
            stack.pop()
            continue
        key, _, value = line.partition(":") if ":" in line.split("{")[0] else line.partition(" ")
        key, value = key.strip(), value.strip()
        if value == "{" or line.endswith("{"):
            stack.append(key.rstrip("{").strip())
        elif value == "[":
            listing = (key, [])
        else:
            settings[".".join(stack + [key])] = value
    return settings


class ClusterComposeTests(unittest.TestCase):
    def setUp(self):
        self.base = yaml.safe_load(_read(DOCKER, "docker-compose.yml"))
        self.compose = yaml.safe_load(_read(DOCKER, "docker-compose.cluster.yml"))
        self.services = self.compose["services"]

    def merged_environment(self, name):
        env = dict(self.base["services"].get(name, {}).get("environment", {}))
        env.update(self.services[name].get("environment", {}))
        return env

    def test_services(self):
        """The overlay adds three NATS servers, a second cairn node and an optional load balancer; server is node 1."""
        self.assertEqual(set(self.services), {*NATS_SERVICES, *CAIRN_NODES, "lb"})
        self.assertNotIn("build", self.services["server"])  # the base file's server, extended
        self.assertEqual(self.services["server2"]["build"], self.base["services"]["server"]["build"])
        self.assertEqual(self.services["lb"]["profiles"], ["lb"])

    def test_nats_servers(self):
        """Each NATS server: the official image, the shared config read-only, its own name, volume and healthcheck."""
        names = set()
        for name in NATS_SERVICES:
            nats = self.services[name]
            self.assertRegex(nats["image"], r"^nats:[0-9.]+-alpine$")  # busybox wget for the healthcheck
            # Its name from the environment, which the config reads: not --server_name (a reload refuses that).
            self.assertEqual(nats["command"], ["--config", "/etc/nats/nats-cluster.conf"])
            names.add(nats["environment"]["NATS_SERVER_NAME"])
            self.assertIn("./nats-cluster.conf:/etc/nats/nats-cluster.conf:ro", nats["volumes"])
            self.assertIn(f"{name}-data:/data", nats["volumes"])
            self.assertIn(f"{name}-data", self.compose["volumes"])
            test = nats["healthcheck"]["test"]
            self.assertEqual(test[0], "CMD")
            self.assertIn("http://127.0.0.1:8222/healthz?js-enabled-only=true", test)
            self.assertNotIn("ports", nats)  # NATS is never published to the host
            self.assertEqual(nats["networks"], ["nats"])
            self.assertEqual(nats["restart"], "unless-stopped")
        self.assertEqual(names, set(NATS_SERVICES))
        self.assertIs(self.compose["networks"]["nats"]["internal"], True)

    def test_cairn_nodes_cluster_settings(self):
        """Both nodes use the three NATS servers with R3, their own node name, and the shared identity secret."""
        node_names = set()
        for name in CAIRN_NODES:
            env = self.merged_environment(name)
            urls = env["CAIRN_CLUSTER_NATS"].split(",")
            self.assertEqual(
                sorted((urlsplit(u).scheme, urlsplit(u).hostname, urlsplit(u).port) for u in urls),
                [("nats", n, 4222) for n in NATS_SERVICES],
            )
            self.assertEqual(env["CAIRN_CLUSTER_REPLICAS"], "3")
            node_names.add(env["CAIRN_NODE_NAME"])
            self.assertEqual(env["CAIRN_IDENTITY_FILE"], "/run/secrets/cairn-identity")
            self.assertEqual(self.services[name]["secrets"], ["cairn-identity"])
            self.assertEqual(set(self.services[name]["networks"]), {"default", "nats"})
            self.assertTrue({"nats1", "nats2", "nats3"} <= set(self.services[name]["depends_on"]))
            literal = {k: v for k, v in env.items() if "${" not in v and k not in CLUSTER_VARIABLES}
            config = Config.from_env(literal)
            self.assertEqual(len(config.cluster_nats), 3)
        self.assertEqual(len(node_names), len(CAIRN_NODES))
        self.assertEqual(self.compose["secrets"]["cairn-identity"], {"file": "./secrets/identity.key"})

    def test_environment_read_by_code(self):
        """Every variable given to a node is one the code reads (or one the cluster-node work adds)."""
        for name in CAIRN_NODES:
            unknown = set(self.merged_environment(name)) - VARIABLES
            self.assertEqual(unknown, CLUSTER_VARIABLES - VARIABLES)

    def test_nodes_agree(self):
        """server2 gets exactly what server gets (after the merge with docker-compose.yml), but its name."""
        one, two = self.merged_environment("server"), self.merged_environment("server2")
        self.assertEqual(set(one), set(two))
        self.assertEqual({k for k in one if one[k] != two[k]}, {"CAIRN_NODE_NAME", "CAIRN_RELAY_ATTACH_ADDRESS"})

    def test_relay_attach_address_is_the_nodes_own_port(self):
        """Each node tells devices to attach at its own published TCP port (not the balancer's, not another node's)."""
        for name in CAIRN_NODES:
            address = self.merged_environment(name)["CAIRN_RELAY_ATTACH_ADDRESS"]
            address = address.replace("${CAIRN_PUBLIC_HOST:-127.0.0.1}", "127.0.0.1")
            ports = self.services[name].get("ports") or self.base["services"][name]["ports"]
            published = {p.rsplit(":", 1)[1]: p.split(":")[-2] for p in ports}
            self.assertEqual(address, f"tcp://127.0.0.1:{published['7400']}")
            Config.from_env({"CAIRN_RELAY_ATTACH_ADDRESS": address})  # a value the node accepts

    def test_secrets_not_in_environment(self):
        """No secret value is written in the file: secrets are ${...} from docker/.env or files under /run/secrets."""
        for name, service in self.services.items():
            for variable, value in service.get("environment", {}).items():
                if variable.endswith("_FILE"):
                    self.assertTrue(value.startswith("/run/secrets/"), (name, variable))
                elif SECRET_NAME.search(variable):
                    self.assertRegex(value, r"^\$\{" + variable + r"[:}]", (name, variable))
                for url in value.split(","):
                    self.assertIsNone(urlsplit(url.strip()).password, (name, variable))
        self.assertFalse(os.path.exists(os.path.join(DOCKER, "secrets", "identity.key")))

    def test_identity_secret_ignored(self):
        """The identity key made for the compose secret is never committed (git check-ignore)."""
        d = utils.getProcessOutputAndValue(
            "git", ["check-ignore", "-q", "docker/secrets/identity.key"], env=os.environ, path=REPO
        )
        return d.addCallback(lambda result: self.assertEqual(result[2], 0, result))

    def test_host_ports_unique(self):
        """No two services of the merged stack publish the same host port."""
        published = []
        for compose in (self.base, self.compose):
            for name, service in compose["services"].items():
                if name in self.base["services"] and compose is self.compose:
                    continue  # the overlay does not add ports to a base service
                published.extend(_host_ports(service))
        self.assertEqual(len(published), len(set(published)), published)
        self.assertNotIn("ports", self.services["server"])

    def test_server2_ports_and_volume(self):
        """server2 publishes cairn TCP, WebSocket and management on 7410, 7411 and 9091, with its own volume."""
        server2 = self.services["server2"]
        self.assertEqual(set(server2["ports"]), {"9091:9090", "7410:7400", "7411:7401"})
        self.assertEqual(server2["volumes"], ["server2-data:/data"])
        self.assertIn("server2-data", self.compose["volumes"])

    def test_load_balancer(self):
        """The lb profile runs haproxy in TCP mode over both nodes' TCP and WebSocket ports, by source address."""
        lb = self.services["lb"]
        self.assertTrue(lb["image"].startswith("haproxy:"))
        self.assertIn("./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro", lb["volumes"])
        cfg = [line.split("#")[0].split() for line in _read(DOCKER, "haproxy.cfg").splitlines()]
        cfg = [words for words in cfg if words]
        self.assertIn(["mode", "tcp"], cfg)
        binds = [words[1] for words in cfg if words[0] == "bind"]
        self.assertEqual(binds, [":7500", ":7501"])
        self.assertEqual(set(lb["ports"]), {"7500:7500", "7501:7501"})
        servers = [words[2:] for words in cfg if words[0] == "server"]
        self.assertEqual([s[0] for s in servers], ["server:7400", "server2:7400", "server:7401", "server2:7401"])
        # Each checked through its management port's /health ("ok", not "degraded").
        self.assertEqual({tuple(s[1:]) for s in servers}, {("check", "port", "9090")})
        checks = [w for w in cfg if w[0] == "option" and w[1] == "httpchk"]
        self.assertEqual(checks, [["option", "httpchk", "GET", "/health"]] * 2)
        self.assertEqual([w for w in cfg if w[0] == "balance"], [["balance", "source"]] * 2)


class NatsConfigTests(unittest.TestCase):
    def setUp(self):
        self.text = _read(DOCKER, "nats-cluster.conf")
        self.settings = nats_conf(self.text)

    def test_jetstream_fsync_always(self):
        """JetStream is on, stores under the /data volume, and fsyncs every write (sync_interval: always)."""
        self.assertEqual(self.settings["jetstream.sync_interval"], "always")
        self.assertEqual(self.settings["jetstream.store_dir"], "/data")

    def test_cluster_routes(self):
        """The cluster routes to the three NATS services on 6222."""
        self.assertEqual(self.settings["cluster.listen"], "0.0.0.0:6222")
        self.assertEqual(self.settings["cluster.routes"], [f"nats://{n}:6222" for n in NATS_SERVICES])
        self.assertTrue(self.settings["cluster.name"])

    def test_ports(self):
        """Clients on 4222 (the nodes' URLs), monitoring on 8222 (the healthcheck)."""
        self.assertEqual(self.settings["listen"], "0.0.0.0:4222")
        self.assertEqual(self.settings["http"], "0.0.0.0:8222")

    def test_max_payload_fits_a_message(self):
        """NATS's max_payload leaves room for a cairn message of CAIRN_MAX_PAYLOAD plus subject and headers."""
        value = self.settings["max_payload"]
        self.assertRegex(value, r"^\d+MB$")
        self.assertGreater(int(value[:-2]) * 1024 * 1024, Config.from_env({}).max_payload)

    def test_lame_duck_for_rolling_restarts(self):
        """A stopped server goes into lame duck mode first, within the compose stop grace period."""
        self.assertIn("lame_duck_duration", self.settings)
        compose = yaml.safe_load(_read(DOCKER, "docker-compose.cluster.yml"))
        for name in NATS_SERVICES:
            self.assertEqual(compose["services"][name]["stop_grace_period"], "60s")

    def _nats_test(self, path):
        from tests._nats import nats_server_binary

        binary = nats_server_binary()
        return utils.getProcessOutputAndValue(binary, ["-t", "-c", path], env={"NATS_SERVER_NAME": "nats1"})

    @defer.inlineCallbacks
    def test_nats_server_accepts_file(self):
        """nats-server -t accepts the file as it is."""
        out, err, code = yield self._nats_test(os.path.join(DOCKER, "nats-cluster.conf"))
        self.assertEqual(code, 0, (out, err))
        self.assertIn("server_name: $NATS_SERVER_NAME", self.text)

    @defer.inlineCallbacks
    def test_nats_server_rejects_bad_copy(self):
        """The check is real: nats-server -t refuses a copy with a bad sync_interval."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(self.text.replace("sync_interval: always", "sync_interval: sometimes"))
        out, err, code = yield self._nats_test(path)
        self.assertNotEqual(code, 0)
        self.assertIn(b"sync_interval", out + err)


def loopback_nats_conf(text, name, ports, routes, store):
    """C{text} (docker/nats-cluster.conf) adapted to 127.0.0.1: ports, routes and store of this test."""
    client, http, cluster = ports
    replaced = (
        ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client}"),
        ("http: 0.0.0.0:8222", f"http: 127.0.0.1:{http}"),
        ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{cluster}"),
        ("store_dir: /data\n", f'store_dir: "{store}"\n'),
    )
    for old, new in replaced:
        if text.count(old) != 1:
            raise AssertionError(f"{old!r} is not once in the file")
        text = text.replace(old, new)
    for service, port in routes.items():
        text = text.replace(f"nats://{service}:6222", f"nats://127.0.0.1:{port}")
    if text.count("server_name: $NATS_SERVER_NAME\n") != 1:
        raise AssertionError("the file does not take its name from NATS_SERVER_NAME")
    return text.replace("server_name: $NATS_SERVER_NAME\n", f"server_name: {name}\n")


class NatsClusterRunTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_three_servers_form_a_jetstream_cluster(self):
        """Three nats-servers run from loopback copies of the file elect a JetStream leader and pass the healthcheck."""
        import treq
        from twisted.web.client import HTTPConnectionPool

        from tests import _nats

        _nats.nats_server_binary()
        text = _read(DOCKER, "nats-cluster.conf")
        ports = {name: (_nats.free_port(), _nats.free_port(), _nats.free_port()) for name in NATS_SERVICES}
        routes = {name: p[2] for name, p in ports.items()}
        servers = []
        for name in NATS_SERVICES:
            directory = os.path.abspath(self.mktemp())
            server = _nats.NatsServer(directory, name)
            conf = loopback_nats_conf(text, name, ports[name], routes, os.path.join(directory, "js"))
            server.config = lambda conf=conf: conf
            self.addCleanup(server.kill)
            servers.append(server)
        yield defer.gatherResults([s.start() for s in servers])
        yield defer.gatherResults([s.until(_nats._meta_leader) for s in servers])
        pool = HTTPConnectionPool(reactor, persistent=False)
        for name in NATS_SERVICES:
            url = f"http://127.0.0.1:{ports[name][1]}/healthz?js-enabled-only=true"
            response = yield eventually(treq.get(url, pool=pool), 30)
            body = yield response.content()
            self.assertEqual(response.code, 200, body)
            # What the server made of the file: fsync always, 2 MB payloads.
            response = yield eventually(treq.get(f"http://127.0.0.1:{ports[name][1]}/varz", pool=pool), 30)
            varz = json.loads((yield response.content()))
            self.assertIs(varz["jetstream"]["config"]["sync_always"], True)
            self.assertEqual(varz["max_payload"], 2 * 1024 * 1024)
            self.assertEqual(varz["server_name"], name)


class NatsComposeReloadTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_reload_keeps_the_server_name(self):
        """
        nats-server run as the overlay runs it (its command, NATS_SERVER_NAME
        in its environment) reloads on SIGHUP (`docker kill -s HUP natsN`);
        with --server_name on the command line it was refused.
        """

        from tests import _nats

        binary = _nats.nats_server_binary()
        directory = os.path.abspath(self.mktemp())
        server = _nats.NatsServer(directory)
        text = _read(DOCKER, "nats-cluster.conf")
        text = text.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{server.port}")
        text = text.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{_nats.free_port()}")
        text = text.replace("store_dir: /data\n", f'store_dir: "{os.path.join(directory, "js")}"\n')
        text = re.sub(r"(?ms)^cluster \{.*?^\}\n", "", text)  # one server: no routes
        path = os.path.join(directory, "nats-cluster.conf")
        with open(path, "w") as f:
            f.write(text)
        service = yaml.safe_load(_read(DOCKER, "docker-compose.cluster.yml"))["services"]["nats1"]
        argv = [binary] + [path if a == "/etc/nats/nats-cluster.conf" else a for a in service["command"]]
        env = {key: str(value) for key, value in service["environment"].items()}
        self.addCleanup(server.kill)
        yield server.start_as(argv, env)
        self.assertTrue(any("Name:" in line and "nats1" in line for line in server.log), server.log)
        line = yield server.reload()
        self.assertIn("Reloaded server configuration", line)


# -- systemd units of a cluster (issue 15) ------------------------------------

#: What the units' specifiers stand for in these tests (systemd fills them in).
SPECIFIERS = {"%i": "cairn1", "%d": "/run/credentials/cairn-node@cairn1.service", "%H": "host1"}


def _expand(value):
    for specifier, meaning in SPECIFIERS.items():
        value = value.replace(specifier, meaning)
    return value


class SystemdClusterUnitTests(unittest.TestCase):
    def setUp(self):
        self.node = unit_entries(_read(SYSTEMD, "cairn-node@.service"))
        self.nats = unit_entries(_read(SYSTEMD, "nats-server.service"))

    def test_node_hardening(self):
        """The node unit has every hardening option of cairn-server.service, its state directory per node."""
        for key, value in HARDENING.items():
            expected = "cairn-%i" if key == "StateDirectory" else value
            self.assertEqual(_values(self.node, "Service", key), [expected], key)
        self.assertEqual(_values(self.node, "Service", "LimitNOFILE"), ["65536"])

    def test_node_credentials(self):
        """The identity, NATS credentials and management token come in as credentials, named by _FILE variables."""
        credentials = dict(v.split(":", 1) for v in _values(self.node, "Service", "LoadCredential"))
        self.assertEqual(
            credentials,
            {
                "identity.key": "/etc/cairn/identity.key",
                "nats.creds": "/etc/cairn/nats.creds",
                "mgmt.token": "/etc/cairn/mgmt.token",
            },
        )
        env = _unit_environment(self.node)
        self.assertEqual(env["CAIRN_IDENTITY_FILE"], "%d/identity.key")
        self.assertEqual(env["CAIRN_CLUSTER_CREDS_FILE"], "%d/nats.creds")
        self.assertEqual(env["CAIRN_MGMT_TOKEN_FILE"], "%d/mgmt.token")

    def test_no_secret_in_environment(self):
        """No Environment= line of either unit holds a secret: only _FILE paths into the credentials directory."""
        for entries in (self.node, self.nats):
            for name, value in _unit_environment(entries).items():
                if SECRET_NAME.search(name):
                    self.assertTrue(name.endswith("_FILE") and value.startswith("%d/"), name)
                self.assertNotIn("@", value, name)  # no user:password@ in a URL

    def test_node_environment(self):
        """The node is named after the instance, keeps its state per node and reads the cluster settings from a file."""
        env = _unit_environment(self.node)
        self.assertEqual(env["CAIRN_NODE_NAME"], "%i")
        self.assertEqual(env["CAIRN_DATA_DIR"], "/var/lib/cairn-%i")
        self.assertEqual(
            _values(self.node, "Service", "EnvironmentFile"),
            ["/etc/cairn/cluster.env", "-/etc/cairn/cairn-node-%i.env"],
        )
        self.assertEqual({n for n in env if n.startswith("CAIRN_")} - VARIABLES, CLUSTER_VARIABLES - VARIABLES)

    def test_node_exec_start(self):
        """ExecStart runs `twistd --nodaemon --pidfile= cairn`, which twistd accepts with the unit's environment."""
        (command,) = _values(self.node, "Service", "ExecStart")
        argv = shlex.split(command)
        self.assertEqual(argv, [VENV_TWISTD, "--nodaemon", "--pidfile=", "cairn"])
        env = {k: _expand(v) for k, v in _unit_environment(self.node).items() if k not in CLUSTER_VARIABLES}
        # The credentials are files systemd provides; here, cluster settings without them.
        env = {k: v for k, v in env.items() if not k.endswith("_FILE")}
        env["CAIRN_CLUSTER_NATS"] = "nats://nats1.example:4222,nats://nats2.example:4222,nats://nats3.example:4222"
        options = _twistd_accepts(self, argv[1:], env)
        self.assertEqual(options.subCommand, "cairn")
        self.assertEqual(_values(self.node, "Service", "ExecReload"), [EXEC_RELOAD])

    def test_nats_unit(self):
        """nats-server runs the shipped config under its host name, stops through lame duck mode, with its store."""
        (command,) = _values(self.nats, "Service", "ExecStart")
        argv = shlex.split(command)
        self.assertEqual(argv, ["/usr/local/bin/nats-server", "--config", "/etc/nats/nats-server.conf"])
        self.assertEqual(_unit_environment(self.nats)["NATS_SERVER_NAME"], "%H")
        self.assertEqual(_values(self.nats, "Service", "KillSignal"), ["SIGUSR2"])
        self.assertEqual(_values(self.nats, "Service", "StateDirectory"), ["nats"])
        self.assertEqual(_values(self.nats, "Service", "LimitNOFILE"), ["65536"])
        settings = nats_conf(_read(SYSTEMD, "nats-server.conf"))
        self.assertEqual(settings["jetstream.store_dir"], "/var/lib/nats")
        self.assertEqual(settings["jetstream.sync_interval"], "always")
        self.assertEqual(len(settings["cluster.routes"]), 3)
        # Lame duck mode must end before systemd's stop timeout.
        (timeout,) = _values(self.nats, "Service", "TimeoutStopSec")
        lame = int(settings["lame_duck_duration"].rstrip("s")) + int(settings["lame_duck_grace_period"].rstrip("s"))
        self.assertLess(lame, int(timeout))

    def test_same_nats_settings_as_compose(self):
        """The bare-machine NATS config differs from the compose one only in store, monitoring bind, routes and TLS."""
        bare = nats_conf(_read(SYSTEMD, "nats-server.conf"))
        compose = nats_conf(_read(DOCKER, "nats-cluster.conf"))
        differ = {k for k in set(bare) | set(compose) if bare.get(k) != compose.get(k)}
        tls = {f"{block}tls.{key}_file" for block in ("", "cluster.") for key in ("cert", "key", "ca")}
        self.assertEqual(differ, {"jetstream.store_dir", "http", "cluster.routes"} | tls)

    @defer.inlineCallbacks
    def test_nats_server_accepts_bare_config(self):
        """nats-server -t accepts nats-server.conf, its TLS files where nats-server.service's credentials are."""
        from tests._nats import nats_server_binary

        directory = os.path.abspath(self.mktemp())
        path = nats_conf_with_credentials(directory, _read(SYSTEMD, "nats-server.conf"))
        out, err, code = yield utils.getProcessOutputAndValue(
            nats_server_binary(), ["-t", "-c", path], env={"NATS_SERVER_NAME": "host1"}
        )
        self.assertEqual(code, 0, (out, err))

    @defer.inlineCallbacks
    def test_systemd_analyze_verify(self):
        """systemd-analyze verify finds nothing to say about the units (an instance of the template, nats-server)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze not found")
        from tests._nats import nats_server_binary

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "cairn-node@cairn1.service"), "w") as f:
            # verify checks that the program exists: this venv's twistd stands in.
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            f.write(_read(SYSTEMD, "cairn-node@.service").replace(VENV_TWISTD, twistd))
        with open(os.path.join(directory, "nats-server.service"), "w") as f:
            # verify checks that the program exists: the venv's nats-server stands in.
            f.write(_read(SYSTEMD, "nats-server.service").replace("/usr/local/bin/nats-server", nats_server_binary()))
        units = [os.path.join(directory, name) for name in ("cairn-node@cairn1.service", "nats-server.service")]
        out, err, code = yield utils.getProcessOutputAndValue(
            analyze, ["verify", "--man=no", *units], env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"), path=directory
        )
        self.assertEqual((code, out, err), (0, b"", b""))


def haproxy_binary():
    """haproxy's path; without it the test skips, or fails under CI=true (.ci/run installs it)."""
    binary = shutil.which("haproxy")
    if binary is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("haproxy not found under CI=true (.ci/run installs it with apt-get)")
        raise unittest.SkipTest("haproxy not found (apt-get install haproxy)")
    return binary


class HaproxyConfigTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_haproxy_accepts_file(self):
        """haproxy -c accepts docker/haproxy.cfg (names of compose services unresolved here are allowed)."""
        binary = haproxy_binary()
        out, err, code = yield utils.getProcessOutputAndValue(
            binary, ["-c", "-f", os.path.join(DOCKER, "haproxy.cfg")], env=os.environ
        )
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"Configuration file is valid", out + err)


class _Haproxy(ProcessProtocol):
    """An haproxy process: its log lines, and Deferreds for lines to come."""

    def __init__(self):
        self.lines, self._waiting, self._buffer = [], [], b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.lines.append(line.decode("utf-8", "replace"))
        for item in list(self._waiting):
            predicate, d = item
            if predicate(self.lines):
                self._waiting.remove(item)
                d.callback(None)

    errReceived = outReceived

    def until(self, predicate, timeout=30):
        d = defer.Deferred()
        self._waiting.append((predicate, d))
        self.outReceived(b"")
        return eventually(d, timeout)

    def processEnded(self, reason):
        self.ended.callback(None)


def loopback_haproxy_cfg(text, nodes, binds):
    """
    C{text} (docker/haproxy.cfg) for this test: the listeners on inherited
    sockets C{binds} (fd numbers), the nodes at their loopback ports
    (C{nodes}: compose name -> {"tcp", "websocket", "management"} ports),
    no Docker resolver, health checks logged.
    """
    text = re.sub(r"\nresolvers docker\n(    .*\n)+", "\n", text)
    text = text.replace(" resolvers docker", "")
    text = text.replace("bind :7500", f"bind fd@{binds[0]}").replace("bind :7501", f"bind fd@{binds[1]}")
    for name, ports in nodes.items():
        for inside, kind in ((7400, "tcp"), (7401, "websocket")):
            text = text.replace(
                f" {name}:{inside} check port 9090",
                f" 127.0.0.1:{ports[kind]} check port {ports['management']}",
            )
    text = text.replace("    option httpchk", "    option log-health-checks\n    option httpchk")
    if "check port 9090" in text or "bind :" in text:
        raise AssertionError("the haproxy.cfg layout changed: update loopback_haproxy_cfg")
    return text


class HaproxyRunTests(unittest.TestCase):
    """docker/haproxy.cfg, adapted to loopback, in front of two real nodes sharing one identity."""

    timeout = 120

    def setUp(self):
        self.haproxy = haproxy_binary()
        self.connections = []

    @defer.inlineCallbacks
    def start_node(self, data_dir):
        from cairn.service import make_node
        from tests.test_service import config_for

        node = make_node(
            config_for(data_dir, psk="a PSK for the haproxy test", mgmt_listen="tcp:0:interface=127.0.0.1"), reactor
        )
        node.startService()
        ports = yield eventually(node.ready, 30)
        self.addCleanup(lambda: node.stopService() if node.running else None)
        return node, {name: port.getHost().port for name, port in ports.items()}

    @defer.inlineCallbacks
    def test_balancer_moves_device_when_node_stops(self):
        """Behind the balancer both nodes pass the /health check; a stopped node's device moves to the other."""
        from cairn.mailbox import client as mailbox
        from cairn.pairing import client as pairing
        from tests._harness import drop_all
        from tests.test_client_failover import share_identity

        first, second = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        share_identity(first, second)
        started = [(yield self.start_node(first)), (yield self.start_node(second))]
        nodes = dict(zip(("server", "server2"), (ports for _, ports in started)))
        listeners = []
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            self.addCleanup(s.close)
            listeners.append(s)
        cfg = os.path.abspath(self.mktemp())
        with open(cfg, "w") as f:
            f.write(loopback_haproxy_cfg(_read(DOCKER, "haproxy.cfg"), nodes, (3, 4)))
        proc = _Haproxy()
        reactor.spawnProcess(
            proc,
            self.haproxy,
            [self.haproxy, "-db", "-f", cfg],
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r", 3: listeners[0].fileno(), 4: listeners[1].fileno()},
        )

        def stop():
            if not proc.ended.called:
                proc.transport.signalProcess("KILL")
            return proc.ended

        self.addCleanup(stop)
        passed = re.compile(r"Health check for server cairn_(tcp|ws)/(cairn[12]) succeeded")
        yield proc.until(lambda lines: len({passed.search(x).groups() for x in lines if passed.search(x)}) == 4)

        address = f"tcp:host=127.0.0.1:port={listeners[0].getsockname()[1]}"
        client = Client(reactor, clock=task.Clock(), auto_resume=True)
        track_connections(client.peer, self.connections)
        self.addCleanup(drop_all, self.connections)
        session = yield eventually(client.connect(address))
        yield eventually(pairing.pair_psk(session, "a PSK for the haproxy test"))
        serving = [node for node, _ in started if session.session_id in node.peer.sessions]
        self.assertEqual(len(serving), 1)
        other, other_ports = [(node, ports) for node, ports in started if node is not serving[0]][0]
        # The nodes' trust stores are their own here (SQLite): pair with the other one directly too.
        direct = yield eventually(client.connect(f"tcp:host=127.0.0.1:port={other_ports['tcp']}"))
        yield eventually(pairing.pair_psk(direct, "a PSK for the haproxy test"))
        yield eventually(client.close(direct))

        replaced = defer.Deferred()
        client.on_session_replaced = lambda old, new: replaced.called or replaced.callback(new)
        scheduled = []
        schedule = client._schedule_resume

        advances = []

        def recording(s, delay):
            scheduled.append(delay)
            schedule(s, delay)
            # Each round at once: the balancer decides.
            advances.append(reactor.callLater(0, client.clock.advance, delay))

        def stop_recording():
            # The client resumes on as the test ends: its rounds stay on its own clock.
            client._schedule_resume = schedule
            for call in advances:
                if call.active():
                    call.cancel()

        self.addCleanup(stop_recording)
        client._schedule_resume = recording
        yield eventually(serving[0].stopService(), 30)
        new = yield eventually(replaced, 60)
        self.assertEqual(session.closed.code, 9)
        result = yield eventually(mailbox.forward(new, client.peer_id, b"through the balancer"))
        self.assertFalse(result.duplicate)
        self.assertIn(new.session_id, other.peer.sessions)
