"""
What the first real run of the compose files (docker/docker-compose.yml and
its cluster overlay, on locally built stand-in base images: docker/standins/)
showed wrong, checked where it can fail without a Docker engine.
"""

import configparser
import os
import re
import shutil
import sys

import yaml
from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from cairn.config import Config
from tests.test_deploy import (
    CAIRN_NODES,
    DOCKER,
    REPO,
    _Haproxy,
    _read,
    dockerfile_instructions,
    haproxy_binary,
)

STANDINS = os.path.join(DOCKER, "standins")


def _compose(name):
    return yaml.safe_load(_read(DOCKER, name))


def _published(ports, inside):
    """The host port a compose service publishes for container port C{inside}."""
    return {p.rsplit(":", 1)[1]: p.split(":")[-2] for p in ports}[str(inside)]


class ImageTests(unittest.TestCase):
    def test_image_installs_cluster_extra(self):
        """The image installs the "cluster" extra (nats-py): without it a node with CAIRN_CLUSTER_NATS cannot start."""
        run = " ".join(rest for kw, rest in dockerfile_instructions(_read(DOCKER, "Dockerfile")) if kw == "RUN")
        installed = re.search(r"pip install [^&]*?\"?/src(\[[^\]]*\])?\"?(\s|$)", run)
        self.assertIsNotNone(installed, run)
        self.assertIn("cluster", (installed.group(1) or "[]")[1:-1].split(","))
        setup = configparser.ConfigParser()
        setup.read(os.path.join(REPO, "setup.cfg"))
        self.assertIn("nats-py", setup["options.extras_require"]["cluster"])


class ClusterOverlayTests(unittest.TestCase):
    def setUp(self):
        self.base = _compose("docker-compose.yml")["services"]
        self.overlay = _compose("docker-compose.cluster.yml")["services"]

    def ports(self, name):
        return self.overlay[name].get("ports") or self.base[name]["ports"]

    def test_pairing_links_name_every_node(self):
        """Each node's pairing links list every node's published TCP and WebSocket ports, not a container host name."""
        expected = set()
        for name in CAIRN_NODES:
            expected.add(f"tcp://127.0.0.1:{_published(self.ports(name), 7400)}")
            expected.add(f"ws://127.0.0.1:{_published(self.ports(name), 7401)}/")
        for name in CAIRN_NODES:
            value = self.overlay[name]["environment"]["CAIRN_PUBLIC_ADDRESSES"]
            value = value.replace("${CAIRN_PUBLIC_HOST:-127.0.0.1}", "127.0.0.1")
            self.assertEqual(set(value.split(",")), expected)
            config = Config.from_env({"CAIRN_PUBLIC_ADDRESSES": value})
            self.assertEqual(len(config.public_addresses), len(expected))

    def test_relay_stops_on_sigterm(self):
        """The relay runs under an init: turnserver as PID 1 ignores SIGTERM, and is killed after the grace period."""
        self.assertIs(self.base["relay"].get("init"), True)


class BalancerDescriptorTests(unittest.TestCase):
    """docker/haproxy.cfg starts with the descriptors a container is given, whatever the engine's default."""

    timeout = 60

    @defer.inlineCallbacks
    def test_starts_within_a_low_descriptor_limit(self):
        """haproxy with docker/haproxy.cfg starts with a hard limit of 4096 descriptors (maxconn 20000 needed 40k)."""
        binary, prlimit = haproxy_binary(), shutil.which("prlimit")
        if prlimit is None:
            raise unittest.SkipTest("prlimit not found (util-linux)")
        here = os.path.abspath(self.mktemp())
        os.mkdir(here)
        name = f"cairn-test-{os.getpid()}-{id(self)}"
        text = re.sub(r"\nresolvers docker\n(    .*\n)+", "\n", _read(DOCKER, "haproxy.cfg"))
        text = text.replace(" resolvers docker", "")
        text = text.replace("bind :7500", f"bind abns@{name}-tcp").replace("bind :7501", f"bind abns@{name}-ws")
        self.assertNotIn("bind :", text)
        cfg = os.path.join(here, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(text)
        proc = _Haproxy()
        reactor.spawnProcess(
            proc, prlimit, [prlimit, "--nofile=4096:4096", binary, "-W", "-db", "-f", cfg], env=dict(os.environ)
        )

        def stop():
            if not proc.ended.called:
                proc.transport.signalProcess("KILL")
            return proc.ended

        self.addCleanup(stop)
        # Started, or refused ("Cannot raise FD limit to 40037, limit is 4096").
        yield proc.until(lambda lines: any("Loading success" in x or "[ALERT]" in x for x in lines))
        self.assertFalse([x for x in proc.lines if "[ALERT]" in x], proc.lines)


def _standin_tags():
    """The tags docker/standins/build.sh builds."""
    return set(re.findall(r"docker build -t (\S+)", _read(STANDINS, "build.sh")))


def _normalised(image):
    return image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"


class StandinTests(unittest.TestCase):
    def test_every_base_image_has_a_standin(self):
        """Every image the Dockerfile and the compose files name is one docker/standins/build.sh builds."""
        named = {rest.split()[0] for kw, rest in dockerfile_instructions(_read(DOCKER, "Dockerfile")) if kw == "FROM"}
        for name in ("docker-compose.yml", "docker-compose.cluster.yml"):
            for service in _compose(name)["services"].values():
                if "image" in service:
                    named.add(service["image"])
        self.assertEqual({_normalised(i) for i in named}, {_normalised(t) for t in _standin_tags()})

    def test_readme_says_not_official(self):
        """docker/standins/README.rst says plainly that these are not the official images."""
        self.assertIn("NOT the official images", _read(STANDINS, "README.rst"))

    @defer.inlineCallbacks
    def test_entrypoints_run_the_server_for_options(self):
        """Each stand-in's entrypoint runs its server when the first argument is an option, else the command."""
        bin_dir = os.path.abspath(self.mktemp())
        os.mkdir(bin_dir)
        for server in ("nats-server", "turnserver", "haproxy"):
            with open(os.path.join(bin_dir, server), "w") as f:
                f.write(f'#!/bin/sh\necho {server} "$@"\n')
            os.chmod(os.path.join(bin_dir, server), 0o755)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
        cases = [
            ("nats", ["--config", "c"], "nats-server --config c"),
            ("coturn", ["-c", "c"], "turnserver -c c"),
            ("haproxy", ["-f", "c"], "haproxy -W -db -f c"),
            ("haproxy", ["haproxy", "-f", "c"], "haproxy -W -db -f c"),
            ("nats", ["echo", "as given"], "as given"),
        ]
        for image, argv, expected in cases:
            out, err, code = yield utils.getProcessOutputAndValue(
                "/bin/sh", [os.path.join(STANDINS, image, "entrypoint.sh"), *argv], env=env
            )
            self.assertEqual((out.decode().strip(), code), (expected, 0), (image, argv, err))


def _haproxy_seconds(value):
    """An haproxy time ("5s", "500ms", "2m"; bare numbers are ms) in seconds."""
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h|d)?", value).groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1e-3}[unit]


class BalancerTimingTests(unittest.TestCase):
    def test_dead_node_costs_less_than_its_health_check(self):
        """A connection tried at a dead node's address gives up before the health check would mark the node down."""
        cfg = [line.split("#")[0].split() for line in _read(DOCKER, "haproxy.cfg").splitlines()]
        cfg = [words for words in cfg if words]
        connect = _haproxy_seconds(next(w[2] for w in cfg if w[:2] == ["timeout", "connect"]))
        retries = int(next(w[1] for w in cfg if w[0] == "retries"))
        defaults = next(w for w in cfg if w[0] == "default-server")
        inter = _haproxy_seconds(defaults[defaults.index("inter") + 1])
        fall = int(defaults[defaults.index("fall") + 1])
        self.assertIn(["option", "redispatch"], cfg)
        self.assertLessEqual(connect * (1 + retries), inter * fall)


class CheckClusterTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_help(self):
        """docker/standins/check_cluster.py imports what it uses from cairn and answers --help."""
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            [os.path.join(STANDINS, "check_cluster.py"), "--help"],
            env={**os.environ, "PYTHONPATH": REPO},
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"--compose", out)
