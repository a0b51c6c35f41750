"""The route values: one per kind, what records call them, where their sockets leave from."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from urelay.values.placement import DEFAULT, Placement
from urelay.values.route import DIRECT, Block, Direct, Route, Tls, Unix, Upstream


class RouteTests(SynchronousTestCase):
    def test_labels(self):
        self.assertEqual(
            [route.label for route in (Direct(), Block(), Tls(), Unix("/run/x.sock"), Upstream("tor"))],
            ["direct", "block", "tls", "unix", "tor"],
        )

    def test_placement(self):
        placed = Placement(mark=7)
        self.assertEqual(Direct(placement=placed).placement, placed)
        self.assertEqual(Tls(placement=placed).placement, placed)
        self.assertEqual((Unix("/run/x.sock").placement, Upstream("tor").placement), (DEFAULT, DEFAULT))

    def test_kinds_are_routes(self):
        for route in (DIRECT, Block(), Tls(ca="/etc/ca.pem"), Unix("/run/x.sock"), Upstream("tor")):
            self.assertIsInstance(route, Route)
        self.assertNotIsInstance("direct", Route)

    def test_values(self):
        self.assertEqual(DIRECT, Direct())
        self.assertNotEqual(Direct(), Tls())
        self.assertEqual(Upstream("tor", family=4), Upstream("tor", family=4))
        self.assertEqual(hash(Unix("/a")), hash(Unix("/a")))
