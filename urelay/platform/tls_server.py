# -*- test-case-name: tests.test_dns_tls -*-
"""TLS for listeners: the certificate and key from PEM files, re-read when asked and when the files change, and the factory that puts a listener's protocol under TLS."""

from __future__ import annotations

import os
import re

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from urelay.observe.logs import Logger

log = Logger()

#: Seconds between two looks at the files' modification times, at most
#: one look per new connection.
CHECK_INTERVAL = 5.0

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class CertificateError(Exception):
    """
    A certificate or key file cannot be used.  C{which} is C{"certificate"}
    or C{"private_key"}, the file at fault; C{reason} says why (one line,
    naming the file).
    """

    def __init__(self, which: str, reason: str):
        super().__init__(which, reason)
        self.which = which
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def check_path(which: str, path: str) -> None:
    """
    Refuse a C{path} that is not a plain file path (a URI, empty).
    """
    if not path:
        raise CertificateError(which, "empty: give the path of a PEM file")
    if _URI.match(path):
        raise CertificateError(which, f"{path!r} looks like a URI; give the path of a PEM file")


def load_context(certificate: str, private_key: str, protocols: tuple[bytes, ...] = ()) -> SSL.Context:
    """
    A server context for the certificate chain in the PEM file
    C{certificate} (the server's certificate first, then the intermediate
    ones) and the unencrypted PEM key in C{private_key}, offering the ALPN
    C{protocols} in order of preference (none: no ALPN).  TLS 1.2 and
    later only.  Raises L{CertificateError} when a file cannot be read,
    holds no such PEM block, or the key does not belong to the certificate.
    """
    check_path("certificate", certificate)
    check_path("private_key", private_key)
    _require(certificate, "certificate", b"-----BEGIN CERTIFICATE-----", "PEM certificate")
    _require(private_key, "private_key", b"PRIVATE KEY-----", "PEM private key")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    # An encrypted key fails instead of asking for its passphrase on a terminal.
    context.set_passwd_cb(lambda *_: b"")
    try:
        context.use_certificate_chain_file(certificate.encode())
    except SSL.Error as e:
        raise CertificateError("certificate", f"{certificate}: not a usable PEM certificate chain ({_why(e)})") from None
    try:
        context.use_privatekey_file(private_key.encode())
    except SSL.Error as e:
        if "mismatch" in _why(e):
            raise CertificateError(
                "private_key", f"the key in {private_key} does not belong to the certificate in {certificate}"
            ) from None
        raise CertificateError(
            "private_key", f"{private_key}: not a usable unencrypted PEM private key ({_why(e)})"
        ) from None
    try:
        context.check_privatekey()
    except SSL.Error:
        raise CertificateError(
            "private_key", f"the key in {private_key} does not belong to the certificate in {certificate}"
        ) from None
    if protocols:
        context.set_alpn_select_callback(_selector(protocols))
    return context


def _require(path: str, which: str, marker: bytes, what: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CertificateError(which, f"cannot read {path}: {e.strerror or e}") from None
    if marker not in data:
        raise CertificateError(which, f"{path} holds no {what}")


def _why(error: SSL.Error) -> str:
    reasons = [part[2] for part in (error.args[0] if error.args and isinstance(error.args[0], list) else [])]
    return "; ".join(str(r) for r in reasons if r) or str(error) or "OpenSSL refused it"


def _selector(protocols: tuple[bytes, ...]):
    def select(connection, offered):
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def _stamp(path: str):
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


@implementer(IOpenSSLServerConnectionCreator)
class ServerCertificate:
    """
    The server side of TLS for C{TLSMemoryBIOFactory}: each new connection
    gets the pair now loaded.  L{reload} re-reads the files (on SIGHUP);
    and a new connection looks at the files' modification times, at most
    once every C{interval} seconds on C{clock}, and reloads when they
    changed.  A pair that cannot be used keeps the one loaded, and says so
    in the log once per change (naming C{what} it serves).  The first load
    raises
    L{CertificateError}.
    """

    def __init__(
        self,
        certificate: str,
        private_key: str,
        clock,
        protocols: tuple[bytes, ...] = (),
        interval: float = CHECK_INTERVAL,
        what: str = "TLS",
    ):
        self.certificate = certificate
        self.private_key = private_key
        self._clock = clock
        self._protocols = protocols
        self._interval = interval
        self._what = what
        self._stamps = self._now_stamps()
        self._context = load_context(certificate, private_key, protocols)
        self._looked = clock.seconds()

    def _now_stamps(self):
        return (_stamp(self.certificate), _stamp(self.private_key))

    def reload(self) -> bool:
        """
        Load the files again; True when the new pair is in use.
        """
        self._looked = self._clock.seconds()
        self._stamps = self._now_stamps()
        try:
            context = load_context(self.certificate, self.private_key, self._protocols)
        except CertificateError as e:
            log.warn("{what} certificate not reloaded, the one loaded stays in use: {why}", what=self._what, why=e.reason)
            return False
        self._context = context
        log.info("{what} certificate reloaded from {certificate}", what=self._what, certificate=self.certificate)
        return True

    def _look(self) -> None:
        now = self._clock.seconds()
        if now - self._looked < self._interval:
            return
        self._looked = now
        if self._now_stamps() != self._stamps:
            self.reload()

    def serverConnectionForTLS(self, tlsProtocol):
        self._look()
        return _Connection(SSL.Connection(self._context, None))


class _Connection:
    """
    An C{SSL.Connection} whose handshake reports a peer's close_notify
    (a client that did not accept the certificate says so) as the end of
    the connection: Twisted 26 takes the C{ZeroReturnError} it gets for
    one as a malformed error and logs a traceback.
    """

    def __init__(self, connection: SSL.Connection):
        self._connection = connection

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def do_handshake(self):
        try:
            return self._connection.do_handshake()
        except SSL.ZeroReturnError:
            # An error with an empty error queue: what Twisted takes for EOF.
            raise SSL.Error([]) from None


class TlsServerFactory(TLSMemoryBIOFactory):
    """
    C{factory}'s protocols under TLS with C{certificate} (a
    L{ServerCertificate}); a connection C{factory} refuses (its
    C{buildProtocol} returns L{None}) is closed at once, before any TLS.
    """

    noisy = False

    def __init__(self, certificate: ServerCertificate, factory):
        super().__init__(certificate, False, factory)

    def buildProtocol(self, addr):
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)
