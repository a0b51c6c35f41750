"""
[dns] allow = on-link (the default) with the DNS listeners in another network namespace, where
on-link must be decided by that namespace's routes, not by urelay's own:

    lan (fd00:1::2, 192.168.1.2) ──veth── gw (DNS listeners: [dns] netns = gw) ──veth── router ──veth── far (fd00:3::2)

urelay runs in this process (the host's namespace, which knows none of these networks). Needs
root; skipped with the reason otherwise.
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.netns import Namespaces, ip, skip_reason
from tests.support.peers import require, run, start_urelay

PREFIX = IPv6Network("fd75:7265:6c61:7900::/64")

_SKIP = skip_reason()


class OnLinkInNamespaceTests(TestCase):
    timeout = 120

    if _SKIP:
        skip = _SKIP

    def setUp(self):
        require(self, "dig")
        ns = self.ns = Namespaces(self)
        for role in ("gw", "lan", "router", "far"):
            ns.add(role)
        ns.link("lan", ["fd00:1::2/64", "192.168.1.2/24"], "gw", ["fd00:1::1/64", "192.168.1.1/24"])
        ns.link("gw", ["fd00:2::1/64"], "router", ["fd00:2::2/64"])
        ns.link("router", ["fd00:3::1/64"], "far", ["fd00:3::2/64"])
        ip("-n", ns.names["gw"], "-6", "route", "add", "fd00:3::/64", "via", "fd00:2::2")
        ip("-n", ns.names["far"], "-6", "route", "add", "default", "via", "fd00:3::1")
        ip("netns", "exec", ns.names["router"], "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        self.relay = start_urelay(
            self,
            f"""
[urelay]
state = memory
[socks]
listen =
[dns]
listen = udp:0:interface=\\:\\: tcp6:0:interface=\\:\\:
netns = {ns.names["gw"]}
""",
        )
        self.udp, self.tcp = self.relay.ports["DNS"]

    @inlineCallbacks
    def dig(self, role: str, server: str, tcp: bool):
        out, err, code = yield run(*self.ns.run(
            role, "dig", f"@{server}", "-p", str(self.tcp if tcp else self.udp), "+tries=1", "+time=5",
            *(["+tcp"] if tcp else []), "AAAA", "www.example.test",
        ))
        self.assertEqual(code, 0, (role, server, tcp, err))
        return out.decode()

    @inlineCallbacks
    def test_on_link_answered_behind_router_refused(self):
        """
        A client on the gateway's link (IPv6, and IPv4 through the dual-stack
        listener) is answered, as is the router itself; a client two hops
        away, whose packets do reach the listener, gets REFUSED; over UDP
        and TCP alike.
        """
        for tcp in (False, True):
            for role, server in (("lan", "fd00:1::1"), ("lan", "192.168.1.1"), ("router", "fd00:2::1")):
                answered = yield self.dig(role, server, tcp)
                self.assertIn("status: NOERROR", answered, (role, server, tcp))
                address = answered.split("ANSWER SECTION:")[1].split()[4]
                self.assertIn(IPv6Address(address), PREFIX)
            refused = yield self.dig("far", "fd00:2::1", tcp)
            self.assertIn("status: REFUSED", refused, tcp)
            self.assertNotIn("ANSWER SECTION", refused)
