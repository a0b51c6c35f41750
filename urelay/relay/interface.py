# -*- test-case-name: tests.test_relay,tests.test_splice -*-
"""What a relay is to the session that runs it: the interface both relays implement, and how a relayed connection ended."""

from __future__ import annotations

import attrs
from zope.interface import Interface

CLOSED = "closed"
CLIENT_RESET = "client-reset"
UPSTREAM_RESET = "upstream-reset"
IDLE_TIMEOUT = "idle-timeout"
OPERATOR_CLOSED = "operator-closed"


@attrs.frozen
class RelayResult:
    """
    How a relayed connection ended.

    C{bytes_up} counts the bytes handed to the upstream transport (the
    C{pending} bytes included), C{bytes_down} those handed to the client
    transport; bytes that arrive once the relay is closing are dropped and
    not counted.  C{reason} is one of:

      - C{"closed"}: both sides finished normally (an EOF each way, or a
        clean close of a connection that cannot half-close);
      - C{"client-reset"}, C{"upstream-reset"}: that side's connection was
        lost without finishing normally (reset, abort, error);
      - C{"idle-timeout"}: no byte moved either way for the idle timeout;
      - C{"operator-closed"} (or whatever reason was given to
        L{IRelay.close}): closed from outside, by the control API.
    """

    bytes_up: int
    bytes_down: int
    reason: str


class IRelay(Interface):
    """
    Pipes bytes both ways between a client connection and its upstream
    connection once both are up: byte-exact each way, C{pending} first,
    with backpressure, an EOF passed on as a half-close, and an idle
    timeout on the clock it was made with.  It is made with a callback
    that it calls exactly once, with a L{RelayResult}, after both
    connections are lost.

    The frontend and the upstream protocol pass their connections' events
    to it; events may come before L{start}, and are handled, in order,
    when it is called.
    """

    def start(client_transport, upstream_transport, pending=b""):
        """
        Begin relaying between the two transports; C{pending} (what the
        client sent before the upstream was up) goes upstream before
        anything else.  Raises L{RuntimeError} when called twice.
        """

    def counts():
        """
        The bytes relayed so far: (client to upstream, upstream to client).
        """

    def client_data(data):
        """The client sent C{data}."""

    def client_eof():
        """The client will send no more (it half-closed)."""

    def client_lost(reason=None):
        """The client connection is lost, for C{reason} (a failure)."""

    def upstream_data(data):
        """The upstream sent C{data}."""

    def upstream_eof():
        """The upstream will send no more (it half-closed)."""

    def upstream_lost(reason=None):
        """The upstream connection is lost, for C{reason} (a failure)."""

    def close(reason):
        """
        Close both connections as the idle timeout does (what is buffered
        for a side is written first, within an idle period), and finish
        with C{reason}, unless the relay is already closing.  Only once
        started.
        """
