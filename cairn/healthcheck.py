"""
The container's health check (docker/Dockerfile's C{HEALTHCHECK}):
C{python -m cairn.healthcheck} asks the node's C{GET /health} where its
management API listens and exits 0 only if it answers C{"status": "ok"}.

The address is found as C{cairn-server pair} finds it: C{CAIRN_MGMT_URL},
else derived from C{CAIRN_MGMT_LISTEN} (C{ssl:}/C{tls:} give https, so
the check follows a TLS listener). C{/health} answers 200 even when the
node is degraded (cut off from NATS), as the seed says it does ("200 OK
with server status"); so the check reads C{"status"}, as
docker/haproxy.cfg's does, rather than the HTTP code.

Over https the certificate is not verified: the probe goes to the node's
own loopback listener, sends nothing secret (C{/health} takes no token)
and trusts the answer for nothing but this exit status, and the
certificate is usually made out for the node's public name, not for
127.0.0.1.

It prints one line (C{docker inspect} shows it) and never a traceback.
Short-lived, so the standard library's blocking HTTP client.
"""

import json
import os
import ssl
import sys
import urllib.error
import urllib.request

from cairn.cli.pairing_api import PairCommandError, api_url
from cairn.config import Config, ConfigError

#: Seconds the request may take (the HEALTHCHECK's own timeout is 5 s).
TIMEOUT = 4.0


class Unhealthy(Exception):
    """The node is not healthy, or cannot be asked; C{str()} is one line."""


def health_url(environ) -> str:
    """The URL of the node's C{/health} for the settings in C{environ}."""
    url = environ.get("CAIRN_MGMT_URL", "").strip()
    if url:
        return url.rstrip("/") + "/health"
    try:
        config = Config.from_env(environ)
    except ConfigError as e:
        raise Unhealthy(str(e)) from None
    if not config.mgmt_enabled:
        raise Unhealthy("the management API is disabled (CAIRN_MGMT_ENABLED=false): no /health to ask")
    try:
        return api_url(config.mgmt_listen) + "/health"
    except PairCommandError as e:
        raise Unhealthy(str(e).replace("use --url", "set CAIRN_MGMT_URL")) from None


def check(url: str, timeout: float = TIMEOUT) -> str:
    """
    Ask C{url}; the node's status line if it is C{"ok"}.

    @raise Unhealthy: no answer, not 200, not JSON, or another status.
    """
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise Unhealthy(f"{url} answered {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unhealthy(f"no answer at {url} ({getattr(e, 'reason', e)})") from None
    try:
        health = json.loads(body)
        status = health["status"]
    except (ValueError, TypeError, KeyError):
        raise Unhealthy(f"{url} answered something else than the node's health") from None
    if status != "ok":
        reason = health.get("reason")
        raise Unhealthy(f"{status}: {reason}" if reason else str(status))
    return f"ok: cairn-server {health.get('version', '?')}, {health.get('sessions', '?')} session(s)"


def main(environ=None, out=None) -> int:
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    try:
        line = check(health_url(environ))
    except Unhealthy as e:
        print(f"unhealthy: {e}", file=out)
        return 1
    print(line, file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
