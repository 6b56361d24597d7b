"""
C{cairn-server pair}: ask the running node for a PIN, a link, a QR code or
its peer id; C{cairn-server psk}: rotate or disable its PSK.

The codes are made by the node that is running, through its management
API on loopback with the bearer token, so that the node which will check
a PIN is the one that issued it. The API address comes from
C{CAIRN_MGMT_LISTEN} (or C{--url}); the token from C{--token-file},
C{CAIRN_MGMT_TOKEN}, C{CAIRN_MGMT_TOKEN_FILE} or the node's generated
C{<data dir>/mgmt.token}.

This is a short-lived command, so it uses the standard library's blocking
HTTP client rather than a reactor.
"""

import json
import os
import re
import urllib.error
import urllib.request

from cairn.config import Config, ConfigError

TOKEN_FILE_NAME = "mgmt.token"


class PairCommandError(Exception):
    """Something the user must fix; the message is one line."""


def api_url(listen: str) -> str:
    r"""
    The loopback URL of a management endpoint description.

    C{tcp:9090}, C{tcp:port=9090:interface=0.0.0.0} -> C{http://127.0.0.1:9090};
    C{tcp:9090:interface=\:\:1} -> C{http://[::1]:9090} (an endpoint string
    escapes the colons of an IPv6 address); C{ssl:}/C{tls:} -> https.
    """
    if not listen:
        raise PairCommandError("the management API is disabled (CAIRN_MGMT_LISTEN=none); use --url")
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", listen)]
    kind, rest = parts[0], parts[1:]
    schemes = {"tcp": "http", "tcp6": "http", "ssl": "https", "tls": "https"}
    if kind not in schemes:
        raise PairCommandError(f"cannot derive a URL from CAIRN_MGMT_LISTEN={listen!r}; use --url")
    port, host, positional = None, None, []
    for part in rest:
        key, eq, value = part.partition("=")
        if not eq:
            positional.append(part)
        elif key == "port" and value.isdigit():
            port = int(value)
        elif key == "interface":
            host = value
    if "" in positional:
        raise PairCommandError(
            f"cannot read CAIRN_MGMT_LISTEN={listen!r} (the colons of an IPv6 address are escaped: "
            r"interface=\:\:1); use --url"
        )
    # Positional arguments, in Twisted's order: port first; for tcp, the interface next.
    if positional and port is None and positional[0].isdigit():
        port = int(positional.pop(0))
    if positional and host is None and kind in ("tcp", "tcp6"):
        host = positional[0]
    if port is None:
        raise PairCommandError(f"no port in CAIRN_MGMT_LISTEN={listen!r}; use --url")
    if host in (None, "", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{schemes[kind]}://{host}:{port}"


def find_token(config) -> str:
    """The bearer token: configured, or the node's generated token file."""
    if config.mgmt_token:
        return config.mgmt_token
    path = os.path.join(config.data_dir, TOKEN_FILE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise PairCommandError(
            f"no CAIRN_MGMT_TOKEN and cannot read {path} ({e.strerror}); "
            "set CAIRN_MGMT_TOKEN or run as the node's user"
        ) from None
    if not token:
        raise PairCommandError(f"{path} is empty")
    return token


def call(url: str, token: str, method: str, path: str, timeout: float = 10.0, body=None):
    """One API call (C{body}: JSON-able or None); returns (headers, body bytes) or raises PairCommandError."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url + path, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.headers, response.read()
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read())["error"]
        except (ValueError, KeyError, TypeError):
            detail = e.reason
        raise PairCommandError(f"the node answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PairCommandError(f"cannot reach the node's management API at {url}: {reason}") from None


def read_token_file(path: str) -> str:
    """The token in the file at C{path} (C{--token-file}), stripped."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise PairCommandError(f"cannot read the token file {path} ({e.strerror})") from None
    if not token:
        raise PairCommandError(f"the token file {path} is empty")
    return token


def _api(environ, url, token_file=None):
    try:
        config = Config.from_env(environ)
    except ConfigError as e:
        raise PairCommandError(str(e)) from None
    token = read_token_file(token_file) if token_file else find_token(config)
    return (url or api_url(config.mgmt_listen)).rstrip("/"), token


def pair(kind: str, environ, url: str = None, out=None, token_file: str = None) -> str:
    """
    Ask the running node for a C{"pin"}, C{"link"}, C{"qr"} or its C{"id"}; return the text to print.
    C{token_file}: read the token from there (C{--token-file}) rather than as L{find_token} does.
    """
    url, token = _api(environ, url, token_file)
    if kind == "id":
        _, body = call(url, token, "GET", "/pairing")
        return json.loads(body)["node_peer_id"]
    if kind == "pin":
        _, body = call(url, token, "POST", "/pairing/pin")
        data = json.loads(body)
        return f"{data['pin']}\n(valid until {_when(data['expires_at'])}, single use)"
    _, body = call(url, token, "POST", "/pairing/link")
    data = json.loads(body)
    if kind == "link":
        return f"{data['link']}\n(valid until {_when(data['expires_at'])}, single use)"
    from cairn.pairing.qr import qr_terminal

    return f"{qr_terminal(data['link'])}\n{data['link']}\n(valid until {_when(data['expires_at'])}, single use)"


def psk(action: str, environ, url: str = None, new_psk: str = None, token_file: str = None) -> str:
    """
    C{"rotate"} the running node's PSK (to C{new_psk}, or a generated one)
    or C{"disable"} it; return the text to print (the new PSK, once).
    """
    url, token = _api(environ, url, token_file)
    if action == "disable":
        call(url, token, "DELETE", "/pairing/psk")
        return "PSK pairing disabled (until the next `cairn-server psk rotate`)"
    _, body = call(url, token, "POST", "/pairing/psk", body={} if new_psk is None else {"psk": new_psk})
    data = json.loads(body)
    _, status = call(url, token, "GET", "/pairing")
    node = json.loads(status)["node_peer_id"]
    limits = []
    if data.get("expires_at") is not None:
        limits.append(f"valid until {_when(data['expires_at'])}")
    if data.get("max_uses"):
        limits.append(f"for {data['max_uses']} pairing(s)")
    return (
        f"{data['psk']}\n(in force now{', ' + ', '.join(limits) if limits else ''}; shown only this once. "
        f"Devices: CAIRN_PSK=<it> ... --psk --expect-peer-id {node})"
    )


def _when(timestamp) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
