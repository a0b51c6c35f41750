# -*- test-case-name: tests.test_socks_codec -*-
"""The sans-I/O SOCKS 4/4a/5 server codec: client bytes in, events and reply bytes out."""

from __future__ import annotations

import enum
from ipaddress import IPv4Address, IPv6Address, ip_address

import attrs

from urelay.codecs.socks_wire import (
    host_text,
    ATYP_DOMAIN,
    ATYP_IPV4,
    ATYP_IPV6,
    BIND,
    CONNECT,
    NO_ACCEPTABLE_METHOD,
    NO_AUTH,
    SOCKS5,
    UDP_ASSOCIATE,
    USERNAME_PASSWORD,
    Incomplete,
    Reader,
    describe_method,
    encode_address,
)


class Socks5Reply(enum.IntEnum):
    """
    The REP field of a SOCKS5 reply (RFC 1928, section 6).
    """

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class Socks4Reply(enum.IntEnum):
    """
    The CD field of a SOCKS4 reply.
    """

    GRANTED = 0x5A
    REJECTED = 0x5B
    NO_IDENTD = 0x5C
    IDENTD_MISMATCH = 0x5D


@attrs.frozen
class AuthRequested:
    """
    A SOCKS5 client sent a username and password (RFC 1929); answer with
    L{SocksServerCodec.auth_result}.
    """

    username: bytes
    password: bytes = attrs.field(repr=False)


@attrs.frozen
class ConnectRequested:
    """
    A client asked for a connection; answer with L{SocksServerCodec.reply}.

    C{version} is 4 (also for SOCKS4a) or 5.  C{host} is a normalised IP
    literal (IPv6 in compressed form, no brackets) or a domain name
    (lower-case, no trailing dot).  C{userid} is the SOCKS4 USERID, C{None}
    for SOCKS5.  C{command} is the SOCKS5 command asked for: C{CONNECT}
    (always, for SOCKS4), or C{BIND} or C{UDP_ASSOCIATE} when the codec was
    made to accept them.
    """

    version: int
    host: str
    port: int
    userid: bytes | None
    command: int = CONNECT


@attrs.frozen
class Rejected:
    """
    The client broke the protocol or asked for something refused.  The
    protocol's error reply, if it has one, is already queued: send
    L{SocksServerCodec.data_to_send} and close.  No event follows.
    """

    reason: str


Event = AuthRequested | ConnectRequested | Rejected

_SOCKS4_COMMANDS = {1: "CONNECT", 2: "BIND"}
_SOCKS5_COMMANDS = {1: "CONNECT", 2: "BIND", 3: "UDP ASSOCIATE"}
_MAX_SOCKS4_FIELD = 255
_ANY = IPv4Address(0)

def _socks4_reply(code: Socks4Reply, address: IPv4Address = _ANY, port: int = 0) -> bytes:
    return bytes([0, code]) + port.to_bytes(2, "big") + address.packed


def _socks5_reply(code: Socks5Reply, address: IPv4Address | IPv6Address = _ANY, port: int = 0) -> bytes:
    return bytes([SOCKS5, code, 0]) + encode_address(address, port)


_SOCKS4_REFUSAL = _socks4_reply(Socks4Reply.REJECTED)
_SOCKS5_NO_METHOD = bytes([5, NO_ACCEPTABLE_METHOD])
_AUTH_OK, _AUTH_FAILED = b"\x01\x00", b"\x01\x01"


def _named(value: int, names: dict[int, str]) -> str:
    name = names.get(value)
    return f"{value} ({name})" if name else str(value)


def _excerpt(raw: bytes) -> str:
    return repr(raw) if len(raw) <= 64 else repr(raw[:64]) + "..."


class _Refused(Exception):
    """
    The message being read is refused with C{reason}; C{reply} is the
    protocol's answer (maybe empty).
    """

    def __init__(self, reason: str, reply: bytes):
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class _Socks5Refused(_Refused):
    """
    A SOCKS5 request refused with reply C{code}.
    """

    def __init__(self, code: Socks5Reply, reason: str):
        super().__init__(reason, _socks5_reply(code))


class _State(enum.Enum):
    # The values finish the sentence "called while ..." in RuntimeErrors.
    VERSION = "waiting for the client's first byte"
    SOCKS4_REQUEST = "reading a SOCKS4 request"
    SOCKS5_GREETING = "reading a SOCKS5 greeting"
    SOCKS5_AUTH = "reading a SOCKS5 username and password"
    SOCKS5_AUTH_PENDING = "waiting for auth_result()"
    SOCKS5_REQUEST = "reading a SOCKS5 request"
    CONNECT_REQUESTED = "waiting for reply()"
    BOUND = "waiting for BIND's second reply()"
    REPLIED = "already replied"
    REJECTED = "rejected"


# The request is made: the client's further bytes are kept for leftover().
_REQUESTED = (_State.CONNECT_REQUESTED, _State.BOUND, _State.REPLIED)


class SocksServerCodec:
    """
    The server side of one SOCKS 4, 4a or 5 handshake, as a state machine
    fed with the client's bytes.

    Client input never raises: it gives events, and anything malformed or
    refused gives L{Rejected}.  Calling a method in the wrong state (such as
    L{reply} before L{ConnectRequested}) raises L{RuntimeError}.  Input may be
    split at any byte; the events and output do not depend on how.

    With C{require_auth}, SOCKS5 clients must use username/password
    authentication (RFC 1929) and SOCKS4/4a clients, which cannot, are
    refused.  Without it, SOCKS5 clients must offer "no authentication".
    SOCKS5 commands other than CONNECT are served when in C{commands}
    (C{BIND}, C{UDP_ASSOCIATE}); the others are refused with "command not
    supported".

    A BIND gets two replies (RFC 1928, section 4): L{reply} is called once
    the listening socket is open (its address), and, when that succeeded,
    once more when the peer has connected (the peer's address) or the wait
    has failed.
    """

    def __init__(self, require_auth: bool = False, commands: frozenset[int] = frozenset({CONNECT})):
        self._require_auth = require_auth
        # The SOCKS5 commands served; others get "command not supported".
        self._commands = commands | {CONNECT}
        self._state = _State.VERSION
        self._version = 0
        self._command = CONNECT
        # Unparsed client bytes: at most one handshake message, except while
        # auth_result() is awaited (the client may pipeline its request).
        self._buffer = bytearray()
        self._leftover = bytearray()
        self._outgoing = bytearray()
        self._readers = {
            _State.VERSION: self._read_version,
            _State.SOCKS4_REQUEST: self._read_socks4_request,
            _State.SOCKS5_GREETING: self._read_greeting,
            _State.SOCKS5_AUTH: self._read_auth,
            _State.SOCKS5_REQUEST: self._read_socks5_request,
        }

    # the caller's side

    def receive(self, data: bytes) -> list[Event]:
        """
        Feed the client's bytes; return the events they complete.  After
        L{ConnectRequested}, bytes are only kept for L{leftover}; after
        L{Rejected}, they are dropped.
        """
        if self._state in _REQUESTED:
            self._leftover += data
            return []
        if self._state is _State.REJECTED:
            return []
        self._buffer += data
        return self._advance()

    def auth_result(self, ok: bool) -> list[Event]:
        """
        Answer an L{AuthRequested}.  On success, return the events completed
        by bytes the client already sent; on failure, C{[Rejected]}.
        """
        self._require(_State.SOCKS5_AUTH_PENDING, "auth_result()")
        if not ok:
            self._outgoing += _AUTH_FAILED
            self._buffer.clear()
            self._state = _State.REJECTED
            return [Rejected("authentication failed")]
        self._outgoing += _AUTH_OK
        self._state = _State.SOCKS5_REQUEST
        return self._advance()

    def reply(self, code: Socks5Reply, bound_host: str = "0.0.0.0", bound_port: int = 0) -> None:
        """
        Answer a L{ConnectRequested} in its protocol version.  C{bound_host}
        must be an IP literal.  SOCKS4 has only "granted" (for
        L{Socks5Reply.SUCCEEDED}) and "rejected" (for any other code), and
        only an IPv4 address (0.0.0.0 stands in for an IPv6 one).

        For a BIND, a successful first reply (the listening address) leaves
        the codec waiting for the second: call C{reply} again with the
        connected peer's address, or with a failure code.
        """
        if self._state is not _State.BOUND:
            self._require(_State.CONNECT_REQUESTED, "reply()")
        code = Socks5Reply(code)
        address = ip_address(bound_host)
        if not 0 <= bound_port <= 0xFFFF:
            raise ValueError(f"port {bound_port} is out of range")
        if self._version == 5:
            self._outgoing += _socks5_reply(code, address, bound_port)
        else:
            granted = Socks4Reply.GRANTED if code is Socks5Reply.SUCCEEDED else Socks4Reply.REJECTED
            self._outgoing += _socks4_reply(granted, address if address.version == 4 else _ANY, bound_port)
        first_of_two = self._state is _State.CONNECT_REQUESTED and self._command == BIND
        self._state = _State.BOUND if first_of_two and code is Socks5Reply.SUCCEEDED else _State.REPLIED

    def data_to_send(self) -> bytes:
        """
        Drain the bytes queued for the client.
        """
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def leftover(self) -> bytes:
        """
        Drain the bytes the client sent after its request (data it sent
        before the reply, optimistically).  Only after L{ConnectRequested}.
        """
        if self._state not in _REQUESTED:
            raise RuntimeError(f"leftover() called while {self._state.value}")
        data = bytes(self._leftover)
        self._leftover.clear()
        return data

    # the machine

    def _require(self, state: _State, method: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"{method} called while {self._state.value}")

    def _advance(self) -> list[Event]:
        """
        Read as many whole messages from the buffer as the state allows.

        Each reader reads its message from the start of the buffer, so a
        message split across receive() calls is simply read again once more
        of it has arrived; readers change state only when they finish.
        """
        events: list[Event] = []
        while self._state in self._readers:
            reader = Reader(self._buffer)
            try:
                event = self._readers[self._state](reader)
            except Incomplete:
                break
            except _Refused as refusal:
                self._outgoing += refusal.reply
                self._buffer.clear()
                self._state = _State.REJECTED
                events.append(Rejected(refusal.reason))
                break
            del self._buffer[: reader.offset]
            if event is not None:
                events.append(event)
        if self._state is _State.CONNECT_REQUESTED:
            self._leftover += self._buffer
            self._buffer.clear()
        return events

    def _read_version(self, reader: Reader) -> None:
        version = reader.peek()
        if version == 4:
            if self._require_auth:
                raise _Refused(
                    "SOCKS4 refused: it carries no password and this listener requires one", _SOCKS4_REFUSAL
                )
            self._state = _State.SOCKS4_REQUEST
        elif version == 5:
            self._state = _State.SOCKS5_GREETING
        else:
            raise _Refused(f"unknown SOCKS version {version:#04x}", b"")
        self._version = version

    def _read_socks4_request(self, reader: Reader) -> ConnectRequested:
        reader.byte()
        command = reader.byte()
        if command != CONNECT:
            name = _named(command, _SOCKS4_COMMANDS)
            raise _Refused(f"SOCKS4 command {name} not supported", _SOCKS4_REFUSAL)
        port = reader.port()
        address = reader.take(4)
        if address == bytes(4):
            raise _Refused("SOCKS4 request for address 0.0.0.0", _SOCKS4_REFUSAL)
        userid = reader.until_nul(_MAX_SOCKS4_FIELD)
        if userid is None:
            raise _Refused("SOCKS4 USERID longer than 255 bytes", _SOCKS4_REFUSAL)
        if address.startswith(b"\0\0\0"):
            host = self._read_socks4a_hostname(reader)
        else:
            host = str(IPv4Address(address))
        self._state = _State.CONNECT_REQUESTED
        return ConnectRequested(4, host, port, userid)

    def _read_socks4a_hostname(self, reader: Reader) -> str:
        raw = reader.until_nul(_MAX_SOCKS4_FIELD)
        if raw is None:
            raise _Refused("SOCKS4a hostname longer than 255 bytes", _SOCKS4_REFUSAL)
        try:
            return host_text(raw)
        except ValueError as e:
            raise _Refused(f"SOCKS4a hostname {_excerpt(raw)} refused: {e}", _SOCKS4_REFUSAL) from None

    def _read_greeting(self, reader: Reader) -> None:
        reader.byte()
        count = reader.byte()
        if count == 0:
            raise _Refused("SOCKS5 greeting offers no authentication methods", _SOCKS5_NO_METHOD)
        methods = reader.take(count)
        wanted = USERNAME_PASSWORD if self._require_auth else NO_AUTH
        if wanted not in methods:
            offered = ", ".join(describe_method(method) for method in methods)
            raise _Refused(
                f"SOCKS5 client offers no acceptable auth method: needs {describe_method(wanted)}, offers {offered}",
                _SOCKS5_NO_METHOD,
            )
        self._outgoing += bytes([5, wanted])
        self._state = _State.SOCKS5_AUTH if self._require_auth else _State.SOCKS5_REQUEST

    def _read_auth(self, reader: Reader) -> AuthRequested:
        version = reader.byte()
        if version != 1:
            raise _Refused(f"SOCKS5 username/password version {version} (not 1)", _AUTH_FAILED)
        length = reader.byte()
        if length == 0:
            raise _Refused("SOCKS5 empty username", _AUTH_FAILED)
        username = reader.take(length)
        password = reader.take(reader.byte())
        self._state = _State.SOCKS5_AUTH_PENDING
        return AuthRequested(username, password)

    def _read_socks5_request(self, reader: Reader) -> ConnectRequested:
        version = reader.byte()
        if version != 5:
            raise _Socks5Refused(Socks5Reply.GENERAL_FAILURE, f"SOCKS5 request with version {version}")
        command = reader.byte()
        if command not in self._commands:
            name = _named(command, _SOCKS5_COMMANDS)
            raise _Socks5Refused(Socks5Reply.COMMAND_NOT_SUPPORTED, f"SOCKS5 command {name} not supported")
        reader.byte()  # RSV
        atyp = reader.byte()
        if atyp == ATYP_IPV4:
            host = str(IPv4Address(reader.take(4)))
        elif atyp == ATYP_IPV6:
            host = str(IPv6Address(reader.take(16)))
        elif atyp == ATYP_DOMAIN and command == UDP_ASSOCIATE:
            # A UDP ASSOCIATE's address only says where the client's datagrams
            # will come from (RFC 1928 section 7); PySocks writes "0" for "any".
            reader.take(reader.byte())
            host = "0.0.0.0"
        elif atyp == ATYP_DOMAIN:
            host = self._read_socks5_domain(reader)
        else:
            reason = f"SOCKS5 address type {atyp} not supported"
            raise _Socks5Refused(Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED, reason)
        port = reader.port()
        self._state = _State.CONNECT_REQUESTED
        self._command = command
        return ConnectRequested(5, host, port, None, command)

    def _read_socks5_domain(self, reader: Reader) -> str:
        length = reader.byte()
        if length == 0:
            raise _Socks5Refused(Socks5Reply.HOST_UNREACHABLE, "SOCKS5 request with an empty domain name")
        raw = reader.take(length)
        try:
            return host_text(raw)
        except ValueError as e:
            reason = f"SOCKS5 domain name {_excerpt(raw)} refused: {e}"
            raise _Socks5Refused(Socks5Reply.HOST_UNREACHABLE, reason) from None
