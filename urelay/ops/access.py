# -*- test-case-name: tests.test_dashboard -*-
"""Who may use the control API on each listener: open on loopback and Unix sockets, a token (Bearer or a login cookie) elsewhere, and POSTs only from the page's own origin."""

from __future__ import annotations

import hashlib
import hmac
from ipaddress import ip_address
from urllib.parse import urlsplit

import attrs
from twisted.web.resource import Resource
from urelay.platform.sites import QuietSite

from urelay.platform.listener import parse_listen_address

#: The login cookie's name; its value is derived from the token (never the token itself).
COOKIE = "urelay_control"


def _header(request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


class TokenFileError(ValueError):
    """The C{[control] token_file} cannot be used; C{str()} says why."""


def read_token(path: str) -> str:
    """
    The token in the file at C{path}: its first line without surrounding
    blanks.  Raises L{TokenFileError} when the file cannot be read, is not
    UTF-8 text, or its first line is empty or shorter than 16 characters
    (a token must not be guessable).
    """
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as e:
        raise TokenFileError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{path} is not UTF-8 text") from None
    if not token:
        raise TokenFileError(f"{path}: its first line is empty; put the token there (e.g. from 'openssl rand -hex 24')")
    if len(token) < 16:
        raise TokenFileError(f"{path}: the token is {len(token)} characters; use at least 16 (e.g. 'openssl rand -hex 24')")
    return token


def is_local_listener(description: str) -> bool:
    """
    Whether the listener C{description} is reachable only from this host:
    a Unix socket, or TCP on a loopback address.  Anything else (every
    address, a network address, systemd sockets, TLS) is not.
    """
    if description.startswith("unix:"):
        return True
    try:
        listen = parse_listen_address(description)
    except ValueError:
        return False
    if not listen.host:
        return False
    return ip_address(listen.host.partition("%")[0]).is_loopback


def control_access(settings, description: str) -> Access:
    """
    The access rules of the control listener C{description} under
    C{settings} (the C{[control]} section): the token is required unless
    it is loopback or a Unix socket.
    """
    return Access(
        required=not is_local_listener(description),
        token=settings.token,
        unix=description.startswith("unix:"),
    )


@attrs.frozen
class Access:
    """
    The rules of one control listener.  With C{required}, every request
    needs the C{token}: as C{Authorization: Bearer TOKEN}, or the cookie
    the login form (C{POST /login}) sets.  Without, a TCP listener answers
    only requests whose C{Host} is an IP address or C{localhost} (a
    rebound DNS name cannot reach it from a browser); a Unix socket
    (C{unix}) answers whatever the C{Host}.  Either way a C{POST} made by a
    browser must come from the listener's own origin, unless it carries the
    Bearer token.
    """

    required: bool
    token: str | None = attrs.field(default=None, repr=False)
    unix: bool = False

    @property
    def cookie(self) -> str:
        """The login cookie's value: derived from the token, so the cookie does not give the token away."""
        return hmac.new(self.token.encode(), b"urelay control login", hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request) -> bool:
        """Whether C{request} carries the token as C{Authorization: Bearer}."""
        header = (_header(request, b"authorization") or "").strip()
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    def logged_in(self, request) -> bool:
        """Whether C{request} carries the login cookie."""
        given = request.getCookie(COOKIE.encode())
        return self.token is not None and given is not None and hmac.compare_digest(given, self.cookie.encode())

    def authorized(self, request) -> bool:
        return not self.required or self.bearer(request) or self.logged_in(request)

    def host_allowed(self, request) -> bool:
        """
        Whether the C{Host} header may be answered without a token: an IP
        address or C{localhost} (or anything over a Unix socket).
        """
        if self.required or self.unix:
            return True
        host = _header(request, b"host")
        if host is None:
            return True  # HTTP/1.0 clients; browsers always send it
        try:
            name = urlsplit("//" + host).hostname or ""
        except ValueError:
            return False  # not a host at all, such as an unclosed "[::1"
        if name == "localhost":
            return True
        try:
            ip_address(name)
        except ValueError:
            return False
        return True

    def same_origin(self, request) -> bool:
        """
        Whether C{request} did not come from another site's page: its
        C{Origin}, when a browser sent one, is this listener's, and
        C{Sec-Fetch-Site} does not say otherwise.
        """
        fetch_site = _header(request, b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return False
        origin = _header(request, b"origin")
        if origin is None:
            return True  # not a browser's cross-site request: browsers send Origin on every POST
        host = _header(request, b"host") or ""
        return origin in (f"http://{host}", f"https://{host}")


class _Refusal(Resource):
    isLeaf = True

    def __init__(self, code: int, message: str, headers: dict[bytes, bytes] | None = None, page: bytes | None = None):
        super().__init__()
        self._code = code
        self._message = message
        self._headers = headers or {}
        self._page = page

    def render(self, request):
        request.setResponseCode(self._code)
        for name, value in self._headers.items():
            request.setHeader(name, value)
        request.setHeader(b"cache-control", b"no-store")
        if self._page is not None and _wants_html(request):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return self._page
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (self._message + "\n").encode()


def _wants_html(request) -> bool:
    return request.method == b"GET" and "text/html" in (_header(request, b"accept") or "")


class _Login(Resource):
    """
    C{POST /login} with a form field C{token}: the right token sets the
    login cookie (HttpOnly, SameSite=Strict) and goes back to the page; a
    wrong one shows the login page again, with 401.
    """

    isLeaf = True

    def __init__(self, access: Access, login_page):
        super().__init__()
        self._access = access
        self._login_page = login_page

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return self._login_page(False)

    def render_POST(self, request):
        request.setHeader(b"cache-control", b"no-store")
        given = (request.args.get(b"token") or [b""])[0].decode("utf-8", "replace").strip()
        if not self._access.token_matches(given):
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return self._login_page(True)
        request.addCookie(COOKIE.encode(), self._access.cookie.encode(), path=b"/", httpOnly=True, sameSite="strict")
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        return b""


class _Logout(Resource):
    """C{POST /logout}: the login cookie is cleared; back to the page (and so to the login form)."""

    isLeaf = True

    def render_POST(self, request):
        request.addCookie(COOKIE.encode(), b"", path=b"/", httpOnly=True, sameSite="strict", max_age=b"0")
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        request.setHeader(b"cache-control", b"no-store")
        return b""


class ControlSite(QuietSite):
    """
    The control API's site on one listener: every request passes
    C{access} before it reaches C{resource}.  Without the token (where it
    is required) a browser asking for a page gets C{login_page(False)} (a
    form that says a token is required here) with 401, anything else a
    plain 401 with C{WWW-Authenticate: Bearer}; a C{Host} that is a name
    on an open TCP listener gets 403, and so does a C{POST} from another
    origin.  C{POST /logout} clears the login cookie.  C{login_page(wrong)} returns the HTML of the login page
    (C{wrong}: after a wrong token).  Resources may read C{request.site.access}.
    Requests are logged at debug only (L{QuietSite}).
    """

    def __init__(self, resource, access: Access, login_page, **kwargs):
        super().__init__(resource, **kwargs)
        self.access = access
        self._login_page = login_page

    def getResourceFor(self, request):
        request.site = self
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        # Not no-referrer: under that a browser's form POST says Origin: null,
        # which the same-origin check below must refuse.
        request.setHeader(b"referrer-policy", b"same-origin")
        access = self.access
        if not access.host_allowed(request):
            return _Refusal(403, "use this listener by its address (http://127.0.0.1:PORT/): a name could be rebound to it")
        post = request.method not in (b"GET", b"HEAD")
        bearer = access.required and access.bearer(request)
        if post and not bearer and not access.same_origin(request):
            return _Refusal(403, "refused: a request from another site")
        if access.required and request.postpath == [b"login"]:
            return _Login(access, self._login_page)
        if access.required and request.postpath == [b"logout"]:
            return _Logout()
        if not access.authorized(request):
            return _Refusal(
                401,
                "this control listener needs the token ([control] token_file): send Authorization: Bearer TOKEN",
                {b"www-authenticate": b'Bearer realm="urelay control"'},
                self._login_page(False),
            )
        return super().getResourceFor(request)
