"""
The admin commands' view of a running node: its management API, reached
the way C{cairn-server pair} reaches it (L{cairn.cli.pairing_api}).

The address: C{--url}, else C{CAIRN_MGMT_URL}, else derived from
C{CAIRN_MGMT_LISTEN}.  The token: C{--token-file}, else C{CAIRN_MGMT_TOKEN}
/ C{CAIRN_MGMT_TOKEN_FILE}, else the node's C{<CAIRN_DATA_DIR>/mgmt.token}
(never from the command line, where other users could read it).

Short-lived commands, so the standard library's blocking HTTP client, as in
L{cairn.cli.pairing_api}.  Every failure is an L{AdminError} with one line and the
exit status it means (L{EXIT_CODES}).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from cairn.cli.pairing_api import PairCommandError, api_url, find_token, read_token_file
from cairn.config import Config, ConfigError

#: Exit statuses of the admin commands (documented in docs/deployment.md).
EXIT_OK = 0
EXIT_ERROR = 1  # the node refused the request, or a setting is bad
EXIT_USAGE = 2  # bad command line (argparse's own status)
EXIT_UNREACHABLE = 3  # no node answers at the management address
EXIT_AUTH = 4  # no token, or the node refused it
EXIT_NOT_FOUND = 5  # no such peer (or pending request)

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "the node refused the request, or a setting is bad",
    EXIT_USAGE: "bad command line",
    EXIT_UNREACHABLE: "the node is not running (nothing answers at the management address)",
    EXIT_AUTH: "no management token, or the node refused it",
    EXIT_NOT_FOUND: "unknown peer (or no pending request from it)",
}


class AdminError(Exception):
    """
    A command failed; C{str()} is one line for the operator.

    @ivar status: the process exit status it means.
    """

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


class NodeAPI:
    """The management API of one running node, with its bearer token."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<NodeAPI {self.url}>"

    def get(self, path: str):
        """C{GET path}: the JSON answer."""
        return self.request("GET", path)

    def request(self, method: str, path: str, body=None):
        """One call; the decoded JSON answer, or an L{AdminError}."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise _refused(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise AdminError(
                f"the node is not running? cannot reach its management API at {self.url} ({reason})",
                EXIT_UNREACHABLE,
            ) from None
        except ValueError:
            raise AdminError(f"{self.url}{path} did not answer JSON: is this a cairn node?") from None


def _refused(error: urllib.error.HTTPError) -> AdminError:
    """The L{AdminError} for an HTTP error answer (its JSON C{error}, if any)."""
    try:
        detail = json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError):
        detail = error.reason
    if error.code == 401:
        return AdminError(
            f"the node refused the management token ({detail}): check CAIRN_MGMT_TOKEN or --token-file",
            EXIT_AUTH,
        )
    if error.code == 404:
        return AdminError(str(detail), EXIT_NOT_FOUND)
    return AdminError(f"the node answered {error.code}: {detail}")


def wake(url: str, timeout: float) -> None:
    """
    Ask C{GET /health} (no token needed) at C{url}: under systemd socket
    activation this starts the node, which then writes its token file.
    """
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise AdminError(
            f"the node is not running? cannot reach its management API at {url} ({reason})",
            EXIT_UNREACHABLE,
        ) from None


def _read_token(path: str) -> str:
    try:
        return read_token_file(path)
    except PairCommandError as e:
        raise AdminError(str(e), EXIT_AUTH) from None


def connect(
    environ: Mapping[str, str],
    url: str | None = None,
    token_file: str | None = None,
    timeout: float = 10.0,
) -> NodeAPI:
    """
    The L{NodeAPI} of the node configured by C{environ} (and the flags).

    @raise AdminError: a bad setting, no management address, or no token.
    """
    try:
        config = Config.from_env(environ)
    except ConfigError as e:
        raise AdminError(str(e)) from None
    try:
        url = url or environ.get("CAIRN_MGMT_URL", "").strip() or api_url(config.mgmt_listen)
    except PairCommandError as e:
        raise AdminError(str(e).replace("use --url", "use --url or CAIRN_MGMT_URL")) from None
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise AdminError(f"not an http(s) URL: {url!r}", EXIT_USAGE)
    if token_file:
        return NodeAPI(url, _read_token(token_file), timeout)
    try:
        token = find_token(config)
    except PairCommandError:
        # A socket-activated node that never ran has no token file yet:
        # wake it, then read the file it wrote.
        wake(url, timeout)
        try:
            token = find_token(config)
        except PairCommandError as e:
            raise AdminError(str(e), EXIT_AUTH) from None
    return NodeAPI(url, token, timeout)
