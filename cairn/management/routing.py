"""
How the management API's endpoints are declared and answered: the bearer
token check, the body limit, JSON (or a L{Raw} body) out, path segments
that never take a fixed route's name, and the one mapping of exceptions to
responses (L{error_response}). The routes themselves are declared on
L{ROUTES} by L{cairn.management.app} and the route modules beside it.
"""

from klein import Klein
from klein.resource import KleinResource
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import BaseConverter

from cairn.management.http import ApiError, Unauthorized, common_headers, json_body, read_body
from cairn.management.token import check_bearer
from cairn.pairing.interfaces import UnknownPeer

# The API's error lines keep the namespace they have always been logged under.
log = Logger(namespace="cairn.management.app")

#: Paths served without a token (nothing sensitive in them).
PUBLIC_PATHS = frozenset({"/health", "/openapi.json"})
#: Fixed path segments beside a variable one (/peers/approve beside
#: /peers/<peer_id>): never taken for the variable.
RESERVED_SEGMENTS = frozenset({"approve", "pending", "reject"})


class Raw:
    """A non-JSON response body."""

    def __init__(self, body: bytes, content_type: str, headers=None):
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


class Segment(BaseConverter):
    """One path segment that is not a name the fixed routes use."""

    regex = "(?!(?:" + "|".join(sorted(RESERVED_SEGMENTS)) + ")(?![^/]))[^/]+"


#: The management API's routes: each route module declares its endpoints
#: on it (L{endpoint}); L{cairn.management.app.ManagementAPI} serves them.
ROUTES = Klein()
# A path segment in <...> never takes the name of a fixed route beside
# it: DELETE /peers/approve is a 405 (POST only), not a peer id "approve".
ROUTES.url_map.converters["default"] = Segment


def endpoint(app, path, method, status=200):
    """
    Route C{method path} to an C{async} handler returning JSON-able data
    (or a L{Raw}); the token check, the body limit and the encoding are
    done here, errors go to the API's error handler (L{error_response}).
    """

    def decorate(handler):
        public = path in PUBLIC_PATHS

        async def endpoint(self, request, **kwargs):
            common_headers(request)
            if not public and not check_bearer(request.getHeader(b"authorization"), self.token):
                raise Unauthorized("missing or invalid bearer token")
            read_body(request)  # enforces BODY_LIMIT on every endpoint
            result = await handler(self, request, **kwargs)
            request.setResponseCode(status)
            if isinstance(result, Raw):
                request.setHeader(b"content-type", result.content_type.encode("ascii"))
                for name, value in result.headers.items():
                    request.setHeader(name.encode("ascii"), value.encode("utf-8"))
                return result.body
            return json_body(request, result)

        endpoint.__name__ = handler.__name__
        endpoint.__qualname__ = handler.__qualname__
        endpoint.__doc__ = handler.__doc__
        app.route(path, methods=[method])(endpoint)
        return endpoint

    return decorate


def error_response(request, failure):
    """
    The one place where exceptions become responses: an L{ApiError} its code
    and message, an unknown peer 404, routing's outcomes theirs, anything
    else a logged 500 "internal error" (never a traceback).
    """
    common_headers(request)
    error = failure.value
    if isinstance(error, ApiError):
        code, message = error.code, str(error)
        if isinstance(error, Unauthorized):
            request.setHeader(b"www-authenticate", b'Bearer realm="cairn"')
    elif isinstance(error, UnknownPeer):
        code, message = 404, "unknown peer"
    elif isinstance(error, RouteNotFound):
        code, message = 404, "no such endpoint"
    elif isinstance(error, MethodNotAllowed):
        allowed = sorted(set(error.valid_methods or ()) - {"HEAD", "OPTIONS"})
        code = 405
        message = f"method {request.method.decode('ascii', 'replace')} not allowed; use {', '.join(allowed)}"
        request.setHeader(b"allow", ", ".join(sorted(error.valid_methods or ())).encode("ascii"))
    elif isinstance(error, HTTPException):
        # Routing's other outcomes, e.g. a redirect for a doubled slash.
        code, message = error.code or 500, error.name.lower()
        for name, value in error.get_response().headers:
            if name.lower() == "location":
                request.setHeader(b"location", value.encode("utf-8"))
    else:
        log.failure(
            "management API: {method} {path} failed",
            failure,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
        )
        code, message = 500, "internal error"
    request.setResponseCode(code)
    return json_body(request, {"error": message})


class JSONResource(KleinResource):
    """Klein's resource, answering a path that is not UTF-8 in JSON (and without logging an error)."""

    def render(self, request):
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            common_headers(request)
            request.setResponseCode(400)
            return json_body(request, {"error": "the path is not UTF-8"})
        return super().render(request)
