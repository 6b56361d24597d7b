"""
The management listener's root: the console's files under C{/ui/}, a
redirect from C{/} (and C{/ui}) to C{/ui/}, and everything else handed to
the management API.

The console is a fixed handful of files shipped in this package
(C{static/}); they are read once, through C{importlib.resources} (so an
installed wheel serves them too), and served from memory under their own
names only.  C{twisted.web.static.File} is not used: it serves a directory
(listings, any file that lands in it, ranges, content types guessed from
the system's mime table), where the console needs exactly these files
with exact types and the headers below.

Every console response carries a strict Content-Security-Policy: scripts,
styles and fetches from this origin only, no inline script or style, images
from this origin or C{blob:} (the pairing QR code is fetched with the token
and shown from a blob), and no framing.
"""

import importlib.resources

from twisted.web.resource import Resource

from cairn.management.http import common_headers, json_body

__all__ = ["CONTENT_SECURITY_POLICY", "ConsoleRoot"]

#: Where the console lives on the management listener.
PREFIX = b"/ui/"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

_SECURITY_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode("ascii"),
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
}


def load_assets() -> dict:
    """C{{name: (body, content type)}} of every file in C{static/} with a known type."""
    assets = {}
    folder = importlib.resources.files(__package__).joinpath("static")
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            assets[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return assets


class ConsoleRoot(Resource):
    """
    The management site's root resource.

    @param api: the management API's resource (a leaf resource: it routes
        on the whole path itself).
    @param assets: the console files (default: L{load_assets}).
    """

    isLeaf = True

    def __init__(self, api, assets=None):
        super().__init__()
        self.api = api
        self.assets = load_assets() if assets is None else assets

    def render(self, request):
        path = request.path.split(b"?", 1)[0]
        if path in (b"/", b"/ui"):
            return self._redirect(request)
        if path.startswith(PREFIX):
            return self._asset(request, path[len(PREFIX) :])
        return self.api.render(request)

    def _redirect(self, request):
        common_headers(request)
        request.setResponseCode(302)
        request.setHeader(b"location", PREFIX)
        return json_body(request, {"location": PREFIX.decode("ascii")})

    def _asset(self, request, name):
        common_headers(request)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            method = request.method.decode("ascii", "replace")
            return json_body(request, {"error": f"method {method} not allowed; use GET, HEAD"})
        asset = self.assets.get(name.decode("utf-8", "replace") or "index.html")
        if asset is None:
            request.setResponseCode(404)
            return json_body(request, {"error": "no such console file"})
        body, content_type = asset
        request.setHeader(b"content-type", content_type.encode("ascii"))
        for header, value in _SECURITY_HEADERS.items():
            request.setHeader(header, value)
        return body
