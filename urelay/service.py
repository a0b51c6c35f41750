# -*- test-case-name: tests.test_service -*-
"""Assembles the running relay from a loaded configuration."""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.threads import deferToThreadPool

from urelay.config import Config
from urelay.connector import DirectConnector
from urelay.connlog import ConnectionLog
from urelay.listener import ListenerService
from urelay.socks.frontend import SocksFactory, SocksPolicy


class _ConnectionLogService(Service):
    """
    Closes the connection log when the relay stops.
    """

    def __init__(self, connection_log: ConnectionLog):
        self.connection_log = connection_log

    def stopService(self):
        super().stopService()
        self.connection_log.close()


def make_service(config: Config, reactor) -> MultiService:
    """
    The whole relay for C{config} as one service; its children are the
    listeners, named after their kind and endpoint string.
    """
    top = MultiService()
    connection_log = ConnectionLog.from_setting(config.urelay.connection_log)
    _ConnectionLogService(connection_log).setServiceParent(top)
    connector = DirectConnector(reactor, timeout=config.urelay.connect_timeout)

    socks = config.socks
    authenticate = None
    if socks.users is not None:
        users = socks.users

        def authenticate(username: bytes, password: bytes):
            # Password hashing is deliberately slow: keep it off the reactor.
            return deferToThreadPool(reactor, reactor.getThreadPool(), users.verify, username, password)

    policy = SocksPolicy(
        listener="socks",
        allows=socks.allows,
        handshake_timeout=socks.handshake_timeout,
        idle_timeout=config.urelay.idle_timeout,
        authenticate=authenticate,
    )
    factory = SocksFactory(reactor, connector, policy, connection_log)
    for description in socks.listen:
        ListenerService(reactor, description, factory, "SOCKS").setServiceParent(top)
    return top
