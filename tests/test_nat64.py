"""RFC 6052 IPv4-embedded IPv6 addresses."""

from ipaddress import IPv4Address, IPv6Address, IPv6Network

from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.nat64 import check_prefix, embed, extract

# RFC 6052 section 2.4, the example table.
RFC6052_EXAMPLES = [
    ("2001:db8::/32", "192.0.2.33", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "192.0.2.33", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "192.0.2.33", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "192.0.2.33", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "192.0.2.33", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "192.0.2.33", "2001:db8:122:344::192.0.2.33"),
    ("64:ff9b::/96", "192.0.2.33", "64:ff9b::192.0.2.33"),
]


class EmbedTests(SynchronousTestCase):
    def test_rfc6052_examples(self):
        for prefix, ipv4, ipv6 in RFC6052_EXAMPLES:
            self.assertEqual(
                embed(IPv4Address(ipv4), IPv6Network(prefix)), IPv6Address(ipv6), f"embedding in {prefix}"
            )

    def test_u_octet_stays_zero(self):
        """
        Bits 64 to 71 are zero for every prefix length, even when the IPv4
        address is all ones.
        """
        for prefix, _, _ in RFC6052_EXAMPLES:
            address = embed(IPv4Address("255.255.255.255"), IPv6Network(prefix))
            self.assertEqual(address.packed[8], 0, prefix)
            self.assertEqual(extract(address, IPv6Network(prefix)), IPv4Address("255.255.255.255"))


class ExtractTests(SynchronousTestCase):
    def test_rfc6052_examples(self):
        for prefix, ipv4, ipv6 in RFC6052_EXAMPLES:
            self.assertEqual(
                extract(IPv6Address(ipv6), IPv6Network(prefix)), IPv4Address(ipv4), f"extracting from {prefix}"
            )

    def test_ignores_suffix(self):
        self.assertEqual(
            extract(IPv6Address("2001:db8:c000:221:ff:1:2:3"), IPv6Network("2001:db8::/32")),
            IPv4Address("192.0.2.33"),
        )

    def test_outside_prefix(self):
        with self.assertRaises(ValueError) as caught:
            extract(IPv6Address("2001:db9::c000:221"), IPv6Network("64:ff9b::/96"))
        self.assertIn("not inside", str(caught.exception))


class PrefixTests(SynchronousTestCase):
    def test_allowed_lengths(self):
        for prefix, _, _ in RFC6052_EXAMPLES:
            self.assertEqual(check_prefix(IPv6Network(prefix)), IPv6Network(prefix))

    def test_other_lengths_refused(self):
        for prefix in ["2001:db8::/33", "64:ff9b::/80", "2001:db8::/128", "::/0"]:
            with self.assertRaises(ValueError) as caught:
                check_prefix(IPv6Network(prefix))
            self.assertIn("RFC 6052", str(caught.exception))
            self.assertRaises(ValueError, embed, IPv4Address("192.0.2.1"), IPv6Network(prefix))

    def test_u_octet_of_96_must_be_zero(self):
        with self.assertRaises(ValueError) as caught:
            check_prefix(IPv6Network("2001:db8:0:0:100::/96"))
        self.assertIn("bits 64 to 71", str(caught.exception))
