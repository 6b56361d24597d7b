"""
Start-up failures an operator can cause, each in a real process, under
C{twistd -n cairn} and C{cairn-server run} alike: one line naming the
variable (or file) and the cause, a non-zero exit status, no traceback.
"""

import os
import select
import subprocess
import sys
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from cairn.startup import StartupError, tell_launcher
from tests._harness import eventually
from tests.test_twistd import REPO

COMMANDS = {
    "twistd": ["-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=", "cairn"],
    "cairn-server": ["-m", "cairn.cli", "run"],
}


class Ended(protocol.ProcessProtocol):
    """Collects stdout and stderr; C{ended} fires with (exit code, output)."""

    def __init__(self):
        self.output = []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output.append(data.decode("utf-8", "replace"))

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback((reason.value.exitCode, "".join(self.output)))


def start(command, data_dir, argv=None, **settings):
    """Run C{command} ("twistd" or "cairn-server", or C{argv}) with loopback listeners and C{settings}."""
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        CAIRN_DATA_DIR=data_dir,
        CAIRN_LISTEN="tcp:0:interface=127.0.0.1",
        CAIRN_WS_LISTEN="none",
        CAIRN_MGMT_LISTEN="none",
    )
    env.update(settings)
    proc = Ended()
    argv = [sys.executable, *(argv or COMMANDS[command])]
    reactor.spawnProcess(proc, sys.executable, argv, env=env, path=REPO)
    return eventually(proc.ended, 60)


class StartupErrorTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def refused(self, expected, data_dir=None, before_logging=True, **settings):
        """
        Start the node both ways; each must end non-zero with exactly one
        line holding C{expected} and no traceback (and nothing else, for a
        failure found before twistd starts logging).
        """
        # Each command its own data directory unless the test prepared one:
        # two nodes creating one identity.key at once may read it half written.
        prepared = data_dir or (self.data_dir if os.path.lexists(self.data_dir) else None)
        results = yield defer.gatherResults(
            [start(command, prepared or os.path.join(self.data_dir, command), **settings) for command in COMMANDS]
        )
        for command, (code, output) in zip(COMMANDS, results):
            lines = output.splitlines()
            matching = [line for line in lines if expected in line]
            self.assertNotEqual(code, 0, f"{command}: {output}")
            self.assertNotIn("Traceback", output, command)
            self.assertEqual(len(matching), 1, f"{command}: {output}")
            if before_logging:
                self.assertEqual(len(lines), 1, f"{command}: {output}")
        return results

    def test_endpoint_not_a_port(self):
        """CAIRN_LISTEN=tcp:notaport is named with Twisted's reason."""
        return self.refused(
            "cairn: CAIRN_LISTEN: 'tcp:notaport' cannot be used: invalid literal for int()",
            CAIRN_LISTEN="tcp:notaport",
        )

    def test_unknown_endpoint_type(self):
        """An endpoint type no parser knows is named with its variable."""
        return self.refused(
            "cairn: CAIRN_MGMT_LISTEN: 'foo:1' cannot be used: Unknown endpoint type: 'foo'", CAIRN_MGMT_LISTEN="foo:1"
        )

    @defer.inlineCallbacks
    def test_busy_port(self):
        """A port in use is one line naming the listener's variable, for each listener."""
        busy = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
        self.addCleanup(busy.stopListening)
        endpoint = f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        yield self.refused(
            f"cairn: CAIRN_LISTEN: cannot listen on '{endpoint}': Address already in use",
            before_logging=False,
            CAIRN_LISTEN=endpoint,
        )
        yield self.refused(
            f"cairn: CAIRN_WS_LISTEN: cannot listen on '{endpoint}': Address already in use",
            before_logging=False,
            CAIRN_WS_LISTEN=endpoint,
        )

    def test_address_not_here(self):
        """An interface address the machine does not have is one line."""
        return self.refused(
            "cairn: CAIRN_MGMT_LISTEN: cannot listen on 'tcp:0:interface=192.0.2.1': Cannot assign requested address",
            before_logging=False,
            CAIRN_MGMT_LISTEN="tcp:0:interface=192.0.2.1",
            CAIRN_MGMT_TOKEN="a-token-for-the-start-up-tests",
        )

    def test_bad_variable(self):
        """A malformed variable is one line naming it (no usage text)."""
        return self.refused("CAIRN_FORWARD_MAX_AGE: '7x' is not a duration", CAIRN_FORWARD_MAX_AGE="7x")

    def test_unreadable_token_file(self):
        """A management token file that cannot be read is one line naming the variable and the path."""
        missing = os.path.join(tempfile.gettempdir(), "no-such-cairn-token")
        return self.refused(f"CAIRN_MGMT_TOKEN_FILE: cannot read '{missing}'", CAIRN_MGMT_TOKEN_FILE=missing)

    def test_data_dir_is_a_file(self):
        """A data directory that is a file is one line."""
        open(self.data_dir, "w").close()
        return self.refused(f"cairn: CAIRN_DATA_DIR: cannot use {self.data_dir}: it is not a directory")

    def test_data_dir_cannot_be_created(self):
        """A data directory that cannot be created is one line with the system's reason."""
        open(self.data_dir, "w").close()
        inside = os.path.join(self.data_dir, "data")
        return self.refused(f"cairn: CAIRN_DATA_DIR: cannot use {inside}: Not a directory", data_dir=inside)

    def test_data_dir_open_to_others(self):
        """A data directory writable by everyone is one line saying how to fix it."""
        os.makedirs(self.data_dir)
        os.chmod(self.data_dir, 0o777)
        return self.refused(f"run: chmod 700 {self.data_dir}")

    def test_read_only_data_dir(self):
        """A data directory on a read-only file system is one line."""
        os.makedirs(self.data_dir, mode=0o700)
        if os.geteuid() != 0:
            os.chmod(self.data_dir, 0o500)
            self.addCleanup(os.chmod, self.data_dir, 0o700)
            why = "Permission denied"
        else:
            try:
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "tmpfs", self.data_dir],
                    check=True,
                    capture_output=True,
                )
            except (OSError, subprocess.CalledProcessError) as e:
                raise unittest.SkipTest(f"cannot mount a read-only tmpfs here: {e}") from None
            self.addCleanup(subprocess.run, ["umount", "-l", self.data_dir], check=False)
            why = "Read-only file system"
        return self.refused(f"cairn: CAIRN_DATA_DIR: cannot write in {self.data_dir}: {why}")

    def test_damaged_identity_key(self):
        """An identity key file that is not a key is one line naming it."""
        os.makedirs(self.data_dir, mode=0o700)
        with open(os.open(os.path.join(self.data_dir, "identity.key"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("not a key")
        return self.refused("identity.key is not a 32-byte Ed25519 seed")

    def test_damaged_database(self):
        """A database file that is not one is one line naming it."""
        os.makedirs(self.data_dir, mode=0o700)
        with open(os.open(os.path.join(self.data_dir, "cairn.sqlite"), os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(b"\x01" * 8192)
        return self.refused("cairn.sqlite: file is not a database", before_logging=False)

    @defer.inlineCallbacks
    def test_daemon_launcher_told(self):
        """
        A daemonizing twistd (no -n) hears of a failure after it forked: one
        line, status 1, no hang, and no pidfile left behind.
        """
        busy = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
        self.addCleanup(busy.stopListening)
        endpoint = f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        os.makedirs(self.data_dir, mode=0o700)
        pid, log = os.path.join(self.data_dir, "twistd.pid"), os.path.join(self.data_dir, "twistd.log")
        argv = ["-c", "from twisted.scripts.twistd import run; run()", f"--pidfile={pid}", f"--logfile={log}", "cairn"]
        code, output = yield start(None, self.data_dir, argv=argv, CAIRN_LISTEN=endpoint)
        self.assertEqual(code, 1, output)
        self.assertIn(f"An error has occurred: b\"CAIRN_LISTEN: cannot listen on '{endpoint}'", output)
        with open(log) as f:
            text = f.read()
        self.assertNotIn("Traceback", text)
        # Already there when the launcher has exited (TellLauncherTests), and once.
        self.assertIn(f"cairn: CAIRN_LISTEN: cannot listen on '{endpoint}': Address already in use", text)
        self.assertEqual(text.count("cannot listen on"), 1, text)
        # twistd removes its pidfile after an Exception only: the daemon's
        # SystemExit would leave it behind, in the way of the next start.
        self.assertFalse(os.path.exists(pid), "the failed daemon left its pidfile behind")


class TellLauncherTests(unittest.TestCase):
    """L{tell_launcher}: a daemon's line is in its log before its launcher hears of the failure."""

    def test_line_logged_before_the_launcher_hears(self):
        """
        The launcher exits as soon as it reads the status pipe, and the log
        is read then: the line must be written (to stderr, which is twistd's
        log in a daemon) before the pipe, not at the child's exit after it.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        written = []

        class Stderr:
            def write(self, data):
                pending, _, _ = select.select([read], [], [], 0)
                written.append((data, bool(pending)))

            def flush(self):
                pass

        self.patch(sys, "stderr", Stderr())
        options = {"statusPipe": write}
        with self.assertRaises(SystemExit) as raised:
            with tell_launcher(options):
                raise StartupError("CAIRN_LISTEN: cannot listen on 'tcp:1': Address already in use")
        # Printed once, already: nothing more for Python to print at exit.
        self.assertEqual(raised.exception.code, 1)
        line = "".join(data for data, _ in written)
        self.assertEqual(line, "cairn: CAIRN_LISTEN: cannot listen on 'tcp:1': Address already in use\n")
        self.assertFalse(any(pending for _, pending in written), "the launcher was told before the line was logged")
        self.assertEqual(os.read(read, 200), b"1 CAIRN_LISTEN: cannot listen on 'tcp:1': Address already in use")
        self.assertIsNone(options["statusPipe"])

    def test_no_launcher(self):
        """Without a launcher waiting (twistd -n, cairn-server run) the error goes on as it is, printed at exit."""
        error = StartupError("CAIRN_LISTEN: 'x' cannot be used")
        for options in (None, {"statusPipe": None}):
            with self.assertRaises(StartupError) as raised:
                with tell_launcher(options):
                    raise error
            self.assertIs(raised.exception, error)
