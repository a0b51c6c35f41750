# -*- test-case-name: tests.test_doh -*-
"""The authority over HTTPS (RFC 8484): one path answering GET and POST with DNS messages, nothing else."""

from __future__ import annotations

from functools import partial
from io import BytesIO

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from urelay.codecs import doh
from urelay.dns.access import ClientGate
from urelay.dns.authority import Authority
from urelay.dns.limits import NOT_IN_ALLOW_LIST, TCP_LIMIT, ConnectionLimit, Refusals
from urelay.dns.server import refusal, respond
from urelay.observe.logs import Logger
from urelay.platform.sites import QuietSite

log = Logger()

#: The path of the DoH template when none is configured (RFC 8484 examples).
DEFAULT_PATH = "/dns-query"
#: Seconds an HTTP connection may stay idle.
DOH_IDLE = 30.0
#: Body bytes after which a request whose body is too long anyway loses
#: its connection instead of being read to the end for a 413.
_ABORT_AFTER = 16 * doh.MAX_MESSAGE


class DohRequest(Request):
    """
    A request whose body is kept only up to the longest DNS message: a
    longer one is marked C{too_large} (and read on, not kept, for a clean
    413), and one far longer is cut off (its HTTP/2 stream reset, its
    HTTP/1.1 connection closed).
    """

    too_large = False
    _received = 0
    _given_up = False

    def gotLength(self, length):
        self.content = BytesIO()
        if length is not None and length > doh.MAX_MESSAGE:
            self.too_large = True

    def handleContentChunk(self, data):
        self._received += len(data)
        if self._received > doh.MAX_MESSAGE:
            self.too_large = True
            if self._received > _ABORT_AFTER and not self._given_up:
                self._given_up = True
                # HTTP/2: reset this stream (the connection's others go on);
                # HTTP/1.1: the connection.
                abort = getattr(self.channel, "abortConnection", None) or self.channel.transport.abortConnection
                abort()
            return
        if not self.too_large:
            self.content.write(data)


class DohResource(Resource):
    """
    The whole site of a DoH listener: at C{path}, GET with C{?dns=} and
    POST of C{application/dns-message} are answered as DNS over TCP would
    answer the client (its address as text), through C{gate} (clients it
    does not allow get REFUSED, reported to C{refusals}); answers carry
    C{Cache-Control: max-age} = their smallest TTL.  Requests that carry
    no DNS query get an HTTP error (400, 405, 413, 414, 415) and other
    paths 404; a message that is not DNS is counted as malformed.
    """

    isLeaf = True

    def __init__(
        self,
        authority: Authority,
        path: str = DEFAULT_PATH,
        gate: ClientGate | None = None,
        refusals: Refusals | None = None,
    ):
        super().__init__()
        self._authority = authority
        self._path = path.encode()
        self._gate = gate
        self._refusals = refusals

    def render(self, request):
        if request.path != self._path:
            return _error(request, 404, "not found: DNS queries go to " + self._path.decode())
        try:
            if request.method == b"GET":
                query = doh.query_from_get(request.args.get(b"dns"))
            elif request.method == b"POST":
                if request.too_large:
                    raise doh.BadRequest(413, f"body longer than {doh.MAX_MESSAGE} bytes")
                request.content.seek(0)
                query = doh.query_from_post(request.getHeader(b"content-type"), request.content.read())
            else:
                request.setHeader(b"allow", b"GET, POST")
                return _error(request, 405, "only GET and POST")
        except doh.BadRequest as e:
            if e.malformed:
                # Counted as plain DNS counts the messages it drops.
                self._authority.malformed()
            return _error(request, e.status, e.reason)
        client = _host(request)
        if self._gate is not None and not self._gate.allows(client):
            response = refusal(query)
            if response is None:
                return _not_dns(self._authority, request)
            if self._refusals is not None:
                self._refusals.refused(
                    NOT_IN_ALLOW_LIST,
                    "DNS query from {client} refused: not in [dns] allow ({allow})",
                    client=client,
                    allow=str(self._gate.allow),
                )
            return _answer(request, response)
        reply = _Reply(request)
        local = getattr(request.getHost(), "host", None)
        pending = respond(self._authority, query, None, reply, client=client, local=local)
        if reply.response is not None:
            return _answer(request, reply.response)
        if pending is None:
            # Dropped by the authority: a message that is no query at all.
            return _error(request, 400, "not a DNS query")
        reply.later()
        return NOT_DONE_YET


class _Reply:
    """
    Where L{respond} sends the answer to one request: kept while
    C{render} runs, written to the request once it has returned (unless
    the client has gone).
    """

    def __init__(self, request):
        self.response: bytes | None = None
        self._request = request
        self._later = False
        self._gone = False

    def later(self) -> None:
        self._later = True
        self._request.notifyFinish().addErrback(self._lost)

    def _lost(self, _) -> None:
        self._gone = True

    def __call__(self, response: bytes) -> None:
        if not self._later:
            self.response = response
            return
        if self._gone:
            return
        self._request.write(_answer(self._request, response))
        self._request.finish()


def _host(request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", None) or "unix"


def _not_dns(authority: Authority, request) -> bytes:
    authority.malformed()
    return _error(request, 400, "not a DNS query")


def _answer(request, response: bytes) -> bytes:
    request.setResponseCode(200)
    request.setHeader(b"content-type", doh.CONTENT_TYPE.encode())
    request.setHeader(b"cache-control", b"max-age=%d" % doh.max_age(response))
    request.setHeader(b"content-length", b"%d" % len(response))
    return response


def _error(request, status: int, reason: str) -> bytes:
    body = (reason + "\n").encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(body))
    log.debug("DoH request from {client} refused: {status} {reason}", client=_host(request), status=status, reason=reason)
    return body


class DohSite(QuietSite):
    """
    The HTTP side of a DoH listener: L{DohRequest}s, C{idle_timeout}
    seconds of idleness per connection, and each request logged at
    C{debug} only (each query would be a line).
    """

    requestFactory = DohRequest

    def __init__(self, resource: DohResource, clock, idle_timeout: float = DOH_IDLE):
        super().__init__(resource, timeout=idle_timeout, reactor=clock)


class _Admitted(ProtocolWrapper):
    client = ""


class LimitedFactory(WrappingFactory):
    """
    C{factory} within the bounds of C{limit} (a L{ConnectionLimit}
    shared with the DNS TCP listeners): a connection beyond them is
    closed at once and reported to C{refusals}.
    """

    noisy = False
    protocol = _Admitted

    def __init__(self, factory, limit: ConnectionLimit, refusals: Refusals | None = None, what: str = "DNS over HTTPS"):
        super().__init__(factory)
        self._limit = limit
        self._refusals = refusals
        self._what = what

    def buildProtocol(self, addr):
        client = getattr(addr, "host", None) or "unix"
        why = self._limit.admit(client)
        if why is not None:
            if self._refusals is not None:
                self._refusals.refused(
                    TCP_LIMIT,
                    "{what} from {client} refused: {why} (at most {total} in all and {per_client} from one"
                    " address: [dns] tcp_clients, tcp_per_client)",
                    what=self._what,
                    client=client,
                    why=why,
                    total=self._limit.total,
                    per_client=self._limit.per_client,
                )
            return None
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            self._limit.release(client)
            return None
        protocol = self.protocol(self, inner)
        protocol.client = client
        protocol.release = partial(self._limit.release, client)
        return protocol

    def unregisterProtocol(self, protocol):
        super().unregisterProtocol(protocol)
        release = getattr(protocol, "release", None)
        if release is not None:
            protocol.release = None
            release()
