# -*- test-case-name: tests.test_placement -*-
"""Where upstream sockets leave from: bind address per family, interface, firewall mark."""

from __future__ import annotations

import attrs


@attrs.frozen
class Placement:
    """
    How an upstream socket is placed.  C{bind4}/C{bind6} are source
    addresses (text) per family, C{interface} a device name the socket is
    bound to, C{mark} a firewall mark for policy routing.  The default
    placement changes nothing.
    """

    bind4: str | None = None
    bind6: str | None = None
    interface: str | None = None
    mark: int | None = None

    @property
    def socket_options(self) -> bool:
        return self.interface is not None or self.mark is not None


DEFAULT = Placement()
