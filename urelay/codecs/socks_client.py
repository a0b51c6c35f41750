# -*- test-case-name: tests.test_socks_client,tests.test_socks_udp_upstream -*-
"""The sans-I/O SOCKS5 client codec (RFC 1928, RFC 1929): one CONNECT or UDP ASSOCIATE through one server."""

from __future__ import annotations

import enum
from ipaddress import IPv4Address, IPv6Address

import attrs

from urelay.codecs.socks import Socks5Reply
from urelay.codecs.socks_wire import (
    ATYP_DOMAIN,
    ATYP_IPV4,
    ATYP_IPV6,
    CONNECT,
    NO_ACCEPTABLE_METHOD,
    NO_AUTH,
    SOCKS5,
    UDP_ASSOCIATE,
    USERNAME_PASSWORD,
    USERNAME_PASSWORD_VERSION,
    Incomplete,
    Reader,
    describe_method,
    encode_address,
)


@attrs.frozen
class Connected:
    """
    The server connected: C{bound_host} and C{bound_port} are its BND.ADDR
    and BND.PORT, the address it connects from (C{bound_host} is an IP
    literal, or a name if the server sent one).
    """

    bound_host: str
    bound_port: int


@attrs.frozen
class Associated:
    """
    The server set up a UDP association: C{relay_host} and C{relay_port}
    are its BND.ADDR and BND.PORT, where the client sends its datagrams
    (C{relay_host} is an IP literal, or a name if the server sent one).
    An unspecified address (C{0.0.0.0} or C{::}) means the address of the
    server the client is connected to: see L{relay}.
    """

    relay_host: str
    relay_port: int

    def relay(self, server_host: str) -> tuple[str, int]:
        """
        Where to send datagrams: the reply's address, or C{server_host}
        (the address the control connection reached) in place of an
        unspecified one.
        """
        if self.relay_host in ("0.0.0.0", "::"):
            return server_host, self.relay_port
        return self.relay_host, self.relay_port


class Socks5ClientError(Exception):
    """
    The server failed the handshake: it broke the protocol (this class
    itself) or refused (the subclasses).  The only exception that the
    server's bytes make L{Socks5ClientCodec.receive} raise.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Socks5AuthError(Socks5ClientError):
    """
    The server accepted none of the methods offered, or refused the
    username and password.
    """


class Socks5ReplyError(Socks5ClientError):
    """
    The server answered the request with a failure: C{code} is its REP
    field, a L{Socks5Reply} if RFC 1928 assigns it, else an L{int}.
    """

    def __init__(self, code: int):
        super().__init__(f"reply {describe_reply(code)}")
        self.code = Socks5Reply(code) if code in _ASSIGNED else code


_ASSIGNED = frozenset(Socks5Reply)


def describe_reply(code: int) -> str:
    """
    A REP code for messages: C{5 (connection refused)}.
    """
    name = Socks5Reply(code).name.lower().replace("_", " ") if code in _ASSIGNED else "unassigned"
    return f"{code} ({name})"


class _State(enum.Enum):
    # The values say what the codec waits for, for messages such as "the
    # server closed the connection while waiting for ...".
    METHOD = "the method selection"
    AUTH = "the username/password status"
    REPLY = "the reply to {command}"
    CONNECTED = "nothing (connected)"
    FAILED = "nothing (failed)"


_MAX_FIELD = 255
_COMMAND_NAMES = {CONNECT: "CONNECT", UDP_ASSOCIATE: "UDP ASSOCIATE"}


class Socks5ClientCodec:
    """
    The client side of one SOCKS5 CONNECT to C{host} and C{port}, as a
    state machine fed with the server's bytes; with C{command}
    C{UDP_ASSOCIATE} (RFC 1928 section 7), the client side of a UDP
    association instead, C{host} and C{port} being the address the client
    will send its datagrams from (C{0.0.0.0} and 0 when it does not know
    yet), and the result L{Associated}.

    C{host} is an IP address or its literal (sent as ATYP 1 or 4) or a
    domain name, sent unresolved (ATYP 3).  With C{username} and
    C{password}, username/password authentication (RFC 1929) is offered as
    well as none; the server chooses.  Bad arguments raise L{ValueError}.

    The greeting is queued at once: send L{data_to_send} after creating the
    codec and after every L{receive}.  Nothing is sent ahead of the
    server's answers (some servers, microsocks among them, drop bytes that
    come early).  Input may be split at any byte; the result does not
    depend on how.
    """

    def __init__(
        self,
        host: str | IPv4Address | IPv6Address,
        port: int,
        username: bytes | None = None,
        password: bytes | None = None,
        *,
        command: int = CONNECT,
    ):
        if command not in _COMMAND_NAMES:
            raise ValueError(f"the client codec does not ask for SOCKS5 command {command}")
        self._command = command
        self._request = bytes([SOCKS5, command, 0]) + encode_address(host, port)
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        self._auth = None
        if username is not None:
            if not 1 <= len(username) <= _MAX_FIELD or len(password) > _MAX_FIELD:
                raise ValueError("a SOCKS5 username must be 1 to 255 bytes, a password at most 255")
            self._auth = bytes([USERNAME_PASSWORD_VERSION, len(username)]) + username
            self._auth += bytes([len(password)]) + password
        self._methods = bytes([NO_AUTH]) if self._auth is None else bytes([NO_AUTH, USERNAME_PASSWORD])
        self._state = _State.METHOD
        self._buffer = bytearray()
        self._outgoing = bytearray(bytes([SOCKS5, len(self._methods)]) + self._methods)
        self._readers = {
            _State.METHOD: self._read_method,
            _State.AUTH: self._read_auth_status,
            _State.REPLY: self._read_reply,
        }

    @property
    def waiting_for(self) -> str:
        """
        What the codec waits for from the server, in words.
        """
        return self._state.value.format(command=_COMMAND_NAMES[self._command])

    @property
    def connected(self) -> bool:
        return self._state is _State.CONNECTED

    def receive(self, data: bytes) -> Connected | Associated | None:
        """
        Feed the server's bytes.  Return L{Connected} (L{Associated} for
        UDP ASSOCIATE) once the server's successful reply is complete, else
        L{None}; raise a
        L{Socks5ClientError} when the server breaks the protocol or
        refuses (after which input is ignored).  Bytes after the reply are
        kept for L{leftover}.
        """
        if self._state is _State.FAILED:
            return None
        self._buffer += data
        if self._state is _State.CONNECTED:
            return None
        while self._state in self._readers:
            reader = Reader(self._buffer)
            try:
                event = self._readers[self._state](reader)
            except Incomplete:
                return None
            except Socks5ClientError:
                self._state = _State.FAILED
                self._buffer.clear()
                raise
            del self._buffer[: reader.offset]
            if event is not None:
                return event
        return None

    def data_to_send(self) -> bytes:
        """
        Drain the bytes queued for the server.
        """
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def leftover(self) -> bytes:
        """
        Drain the bytes the server sent after its successful reply: the
        start of the connection's own data.  Only once connected.
        """
        if self._state is not _State.CONNECTED:
            raise RuntimeError(f"leftover() called while waiting for {self.waiting_for}")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # the machine

    def _read_method(self, reader: Reader) -> None:
        _version(reader, "method selection")
        method = reader.byte()
        if method == NO_ACCEPTABLE_METHOD:
            offered = ", ".join(describe_method(m) for m in self._methods)
            raise Socks5AuthError(f"the server accepts none of the methods offered ({offered})")
        if method not in self._methods:
            raise Socks5ClientError(f"the server chose method {describe_method(method)}, which was not offered")
        if method == USERNAME_PASSWORD:
            self._outgoing += self._auth
            self._state = _State.AUTH
        else:
            self._outgoing += self._request
            self._state = _State.REPLY

    def _read_auth_status(self, reader: Reader) -> None:
        # RFC 1929 says VER 1; some servers answer with 5, and clients
        # (curl among them) look at the status alone.
        version = reader.byte()
        if version not in (USERNAME_PASSWORD_VERSION, SOCKS5):
            raise Socks5ClientError(f"username/password status with version {version} (not 1)")
        status = reader.byte()
        if status != 0:
            raise Socks5AuthError(f"the server refused the username and password (status {status})")
        self._outgoing += self._request
        self._state = _State.REPLY

    def _read_reply(self, reader: Reader) -> Connected | Associated:
        _version(reader, "reply")
        code = reader.byte()
        # A failure is final whatever follows (servers may close before
        # sending the rest of the reply).
        if code != Socks5Reply.SUCCEEDED:
            raise Socks5ReplyError(code)
        reader.byte()  # RSV
        atyp = reader.byte()
        if atyp == ATYP_IPV4:
            host = str(IPv4Address(reader.take(4)))
        elif atyp == ATYP_IPV6:
            host = str(IPv6Address(reader.take(16)))
        elif atyp == ATYP_DOMAIN:
            host = reader.take(reader.byte()).decode("ascii", "backslashreplace")
        else:
            raise Socks5ClientError(f"reply with address type {atyp}")
        port = reader.port()
        self._state = _State.CONNECTED
        return Associated(host, port) if self._command == UDP_ASSOCIATE else Connected(host, port)


def _version(reader: Reader, message: str) -> None:
    version = reader.byte()
    if version != SOCKS5:
        raise Socks5ClientError(f"{message} with version {version} (not 5)")
