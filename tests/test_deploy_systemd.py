"""
What a run of docker/systemd/* under a real systemd (252, in the container
of docker/standins/systemd-host.sh) found wrong, each checked here without
one: the reload command of every unit, nats-server's reload keeping its
name, and the install commands of the docs matching the units' ExecStart.
"""

import os
import re
import shlex
import sys

from twisted.internet import defer, protocol, reactor, utils
from twisted.trial import unittest

from cairn.cluster.connection import JetStream, Settings
from cairn.cluster.node import tls_context
from tests import _nats
from tests._harness import eventually
from tests.test_deploy import (
    SYSTEMD,
    VENV_TWISTD,
    _read,
    _unit_environment,
    _values,
    nats_conf_with_credentials,
    unit_entries,
)
from tests.test_twistd import REPO

SERVICES = ("cairn-server.service", "cairn-node@.service", "nats-server.service")


class _Hangup(protocol.ProcessProtocol):
    """A child that says when it is ready and exits 0 on SIGHUP."""

    def __init__(self):
        self.ready, self.ended = defer.Deferred(), defer.Deferred()

    def outReceived(self, data):
        if not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class ExecReloadTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_reload_needs_only_the_shell(self):
        """Each unit's ExecReload signals the main process with /bin/sh's own kill, no kill program on the PATH."""
        code = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n"
            "sys.exit(3)\n"
        )
        for name in SERVICES:
            (command,) = _values(unit_entries(_read(SYSTEMD, name)), "Service", "ExecReload")
            argv = shlex.split(command)
            # /bin/kill comes from procps, which minimal installs lack.
            self.assertEqual(argv[0], "/bin/sh", name)
            child = _Hangup()
            process = reactor.spawnProcess(child, sys.executable, [sys.executable, "-c", code], env={})
            self.addCleanup(lambda p=process, c=child: c.ended.called or p.signalProcess("KILL"))
            yield eventually(child.ready, 30)
            # systemd puts the main PID in $MAINPID (the variable and its expansion).
            argv = [a.replace("$MAINPID", str(process.pid)) for a in argv]
            status = yield utils.getProcessValue(argv[0], argv[1:], env={"PATH": "/nonexistent"})
            self.assertEqual(status, 0, name)
            self.assertEqual((yield eventually(child.ended, 30)), 0, name)


class NatsUnitReloadTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_reload_keeps_the_server_name(self):
        """
        nats-server run as the unit runs it (its argv and environment, %H a
        host name, its TLS files as the unit's credentials) serves a
        tls:// client that trusts the authority, and reloads on SIGHUP.
        """
        binary = _nats.nats_server_binary()
        directory = os.path.abspath(self.mktemp())
        server = _nats.NatsServer(directory)
        http = _nats.free_port()
        conf = _read(SYSTEMD, "nats-server.conf")
        # This machine's loopback, one server: no routes.
        conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{server.port}")
        conf = conf.replace("http: 127.0.0.1:8222", f"http: 127.0.0.1:{http}")
        conf = conf.replace("store_dir: /var/lib/nats", f'store_dir: "{os.path.join(directory, "js")}"')
        conf = re.sub(r"(?ms)^cluster \{.*?^\}\n", "", conf)
        path = nats_conf_with_credentials(directory, conf)

        entries = unit_entries(_read(SYSTEMD, "nats-server.service"))
        (command,) = _values(entries, "Service", "ExecStart")
        argv = [binary if a == "/usr/local/bin/nats-server" else a for a in shlex.split(command)]
        argv = [path if a == "/etc/nats/nats-server.conf" else a.replace("%H", "host1") for a in argv]
        env = {k: v.replace("%H", "host1") for k, v in _unit_environment(entries).items()}
        self.addCleanup(server.kill)
        yield server.start_as(argv, env)
        self.assertTrue(any("Name:" in line and "host1" in line for line in server.log), server.log)

        # A node's connection, as CAIRN_CLUSTER_TLS_CA sets it up.
        ca = os.path.join(directory, "credentials", "ca.pem")
        settings = Settings((f"tls://localhost:{server.port}",), 1, "cairn", tls=tls_context(ca))
        jet = JetStream(reactor, settings)
        self.addCleanup(jet.close)
        yield eventually(jet.connect(), 45)
        self.assertEqual(jet.health(), (True, None))

        line = yield server.reload()
        self.assertIn("Reloaded server configuration", line)


def _section(text, heading):
    """The lines of the markdown section under C{heading}, up to the next heading of its level or above."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"#{1,%d} " % level, lines[i])),
        len(lines),
    )
    return lines[start:end]


class DocsInstallTests(unittest.TestCase):
    SECTIONS = (
        ("deployment.md", "## systemd (socket activation)"),
        ("scaling.md", "### With systemd, on bare machines"),
    )

    def commands(self, doc, heading):
        return [line.strip() for line in _section(_read(REPO, "docs", doc), heading) if line.startswith("    ")]

    def test_units_run_the_venv_the_docs_make(self):
        """The units' ExecStart is in the venv the docs' systemd install makes; no system-wide pip install there."""
        venv = VENV_TWISTD.rsplit("/bin/", 1)[0]
        for name in ("cairn-server.service", "cairn-node@.service"):
            (command,) = _values(unit_entries(_read(SYSTEMD, name)), "Service", "ExecStart")
            self.assertEqual(shlex.split(command)[0], VENV_TWISTD, name)
        for doc, heading in self.SECTIONS:
            commands = self.commands(doc, heading)
            self.assertIn(f"python3 -m venv {venv}", " ".join(commands), doc)
            pips = [c for c in commands if re.search(r"\bpip install\b", c)]
            self.assertTrue(pips, doc)
            for command in pips:
                # Debian 12 refuses `pip install` into its own Python (PEP 668).
                self.assertTrue(command.startswith(f"{venv}/bin/pip install"), (doc, command))

    def test_nats_check_command_names_the_server(self):
        """The docs' `nats-server -t` sets NATS_SERVER_NAME, which nats-server.conf needs to parse."""
        self.assertIn("$NATS_SERVER_NAME", _read(SYSTEMD, "nats-server.conf"))
        checks = [c for c in self.commands("scaling.md", self.SECTIONS[1][1]) if "nats-server -t" in c]
        self.assertTrue(checks)
        for command in checks:
            self.assertTrue(command.startswith("NATS_SERVER_NAME="), command)
