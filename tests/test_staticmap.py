"""Universal Relay's JSON static map, loaded as is."""

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import attrs
from twisted.trial.unittest import SynchronousTestCase

from urelay.addressing.staticmap import (
    EMPTY,
    FALL_THROUGH,
    AddressRecord,
    DomainSubst,
    GroupError,
    IPSubst,
    NameRecord,
    PrefixRecord,
    StaticMapError,
    TextRecord,
    load_static_map,
    normalise_name,
    parse_static_map,
)

# Universal Relay's own example-static-map.json, byte for byte (tabs included).
UR_EXAMPLE = """{
\t"relay_map": [["matrix.org", 1], ["website.peterjin.org", 2], ["www.example.com", 3], \
["www.example.org", 141414]],
\t"dns_map": [],
\t"hosts_map": [["fileserver", "fe80::1%eth0"]],
\t"resolve_map": [],
\t"groupsub_map": [["s256", {"domain_subst": "apps-vm#.srv.peterjin.org"}]]
}
"""

# The shape static_map_manager.py --combine prints: all seven sections, as
# json.dumps writes them.
UR_COMBINED = json.dumps(
    {
        "relay_map": [["matrix.org", 1]],
        "dns_map": [
            ["router.lan", ["fd00::1", {"qtype": "A", "content": "192.168.1.1"}]],
            ["ipv4only.arpa", [
                {"qtype": "A", "content": "192.0.0.170"},
                {"qtype": "A", "content": "192.0.0.171"},
                {"qtype": "URELAY-A6-SYNTH", "content": None, "a6_synth": "0x5ff6464c00000aa"},
                {"qtype": "URELAY-A6-SYNTH", "content": None, "a6_synth": "0x5ff6464c00000ab"},
            ]],
        ],
        "resolve_map": [],
        "groupsub_map": [["hosts", {"ip_subst": "::/0"}]],
        "dc_map": [["nas.home", "i-hx-hosts-0xffffc0a80105.u-relay.home.arpa"]],
        "do_map": [],
        "ip_map": [],
    }
)


class LoadTests(SynchronousTestCase):
    """Files in Universal Relay's format load into frozen values."""

    def write(self, text):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_universal_relays_example(self):
        """UR's example-static-map.json loads as it is."""
        path = self.write(UR_EXAMPLE)
        static = load_static_map(path)
        self.assertEqual(
            dict(static.relay_by_name),
            {
                "matrix.org": 1,
                "website.peterjin.org": 2,
                "www.example.com": 3,
                "www.example.org": 141414,
            },
        )
        self.assertEqual(static.relay_by_index[141414], "www.example.org")
        self.assertEqual(dict(static.dns_records), {})
        self.assertEqual(list(static.groups), ["s256"])
        self.assertEqual(
            static.groups["s256"].domain, DomainSubst("apps-vm#.srv.peterjin.org")
        )
        self.assertEqual(dict(static.short_groups), {256: static.groups["s256"]})
        self.assertEqual(dict(static.numbered_groups), {})
        self.assertEqual(static.ignored, ("hosts_map",))
        self.assertEqual(static.source, path)

    def test_combined(self):
        """The combine tool's output, with every section, loads."""
        static = parse_static_map(UR_COMBINED)
        self.assertEqual(
            static.records("router.lan"),
            (AddressRecord(IPv6Address("fd00::1")), AddressRecord(IPv4Address("192.168.1.1"))),
        )
        self.assertEqual(
            static.records("ipv4only.arpa")[2:],
            (PrefixRecord(0x5FF6464C00000AA), PrefixRecord(0x5FF6464C00000AB)),
        )
        self.assertEqual(static.ignored, ("dc_map",))
        self.assertEqual(static.source, "<static map>")

    def test_bytes(self):
        """JSON bytes load as JSON text does."""
        self.assertEqual(parse_static_map(UR_EXAMPLE.encode()), parse_static_map(UR_EXAMPLE))

    def test_empty(self):
        """EMPTY, {} and null sections all mean an empty map."""
        for text in ("{}", '{"relay_map": null, "dns_map": [], "groupsub_map": null}'):
            static = parse_static_map(text)
            self.assertEqual(static, EMPTY)
        self.assertEqual(EMPTY.relay_index("a.example"), None)
        self.assertEqual(EMPTY.records("a.example"), None)
        self.assertRaises(GroupError, EMPTY.resolve_group, 1, 1)

    def test_frozen(self):
        """A loaded map cannot be changed."""
        static = parse_static_map(UR_EXAMPLE)
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, static, "groups", {})
        with self.assertRaises(TypeError):
            static.relay_by_name["evil.example"] = 7
        with self.assertRaises(TypeError):
            static.relay_by_index[7] = "evil.example"


class RelayMapTests(SynchronousTestCase):
    """relay_map: [[name, index], ...], index 32 bits."""

    def test_normalised(self):
        """Names are keyed lower-case without a trailing dot, and looked up the same way."""
        static = parse_static_map('{"relay_map": [["WWW.Example.COM.", 5]]}')
        self.assertEqual(dict(static.relay_by_name), {"www.example.com": 5})
        self.assertEqual(static.relay_index("www.EXAMPLE.com."), 5)
        self.assertEqual(static.relay_index("other.example"), None)
        self.assertEqual(static.relay_index("not a name"), None)

    def test_index_forms(self):
        """An index is whatever BigInt() takes: a number, decimal or 0x text."""
        static = parse_static_map(
            '{"relay_map": [["a.example", "0x10"], ["b.example", "17"], '
            '["c.example", 4294967295], ["d.example", 0, {"note": "user object"}], '
            '["e.example", 6.0]]}'
        )
        self.assertEqual(
            dict(static.relay_by_name),
            {"a.example": 16, "b.example": 17, "c.example": 2**32 - 1, "d.example": 0,
             "e.example": 6},
        )

    def test_bad_index(self):
        """The error names the file, the entry and the reason."""
        text = (
            '{"relay_map": [["a.example", 1], ["b.example", 2], ["c.example", 3], '
            '["d.example", "x"]]}'
        )
        error = self.assertRaises(StaticMapError, parse_static_map, text, "map.json")
        self.assertEqual(str(error), "map.json: relay_map[3]: index 'x' is not a number")
        self.assertEqual((error.path, error.where), ("map.json", "relay_map[3]"))
        for index in (-1, 2**32, True, None, 1.5, "1e3", [], ""):
            with self.subTest(index=index):
                text = json.dumps({"relay_map": [["a.example", index]]})
                error = self.assertRaises(StaticMapError, parse_static_map, text)
                self.assertIn("relay_map[0]: index", str(error))

    def test_duplicates(self):
        """A name (in any case) or an index given twice is refused."""
        error = self.assertRaises(
            StaticMapError,
            parse_static_map,
            '{"relay_map": [["a.example", 1], ["A.Example.", 2]]}',
        )
        self.assertEqual(
            str(error), "<static map>: relay_map[1]: name 'a.example' is already relay_map[0]"
        )
        error = self.assertRaises(
            StaticMapError,
            parse_static_map,
            '{"relay_map": [["a.example", 1], ["b.example", "0x1"]]}',
        )
        self.assertEqual(
            str(error),
            "<static map>: relay_map[1]: index 1 is already relay_map[0] ('a.example')",
        )

    def test_bad_entries(self):
        """Entries that are not [name, index], or names UR can never match, are refused."""
        for entry, reason in [
            ("[]", "is not a [key, value] entry"),
            ('"a.example"', "is not a [key, value] entry"),
            ('["a.example"]', "is not a [key, value] entry"),
            ('["a.example", 1, 2, 3]', "[name, index] or [name, index, extra]"),
            ('[5, 1]', "5 is not a string"),
            ('["*.example.com", 1]', "is not a domain name"),
            ('["a..example", 1]', "is not a domain name"),
            ('["", 1]', "is not a domain name"),
            ('["caf\\u00e9.example", 1]', "is not a domain name"),
            (json.dumps(["a" * 64 + ".example", 1]), "is not a domain name"),
        ]:
            with self.subTest(entry=entry):
                error = self.assertRaises(
                    StaticMapError, parse_static_map, f'{{"relay_map": [{entry}]}}'
                )
                self.assertIn("<static map>: relay_map[0]: ", str(error))
                self.assertIn(reason, str(error))


class DnsMapTests(SynchronousTestCase):
    """dns_map: [[name, [record, ...]], ...]."""

    def records(self, *items):
        text = json.dumps({"dns_map": [["host.example", list(items)]]})
        return parse_static_map(text).records("host.example")

    def test_record_kinds(self):
        """Every record form Universal Relay answers becomes a typed value."""
        self.assertEqual(
            self.records(
                "2001:db8::1",
                None,
                0,
                {"qtype": "A", "content": "192.0.2.1"},
                {"qtype": "AAAA", "content": "2001:db8::2", "ttl": 300},
                {"qtype": "CNAME", "content": "Target.Example."},
                {"qtype": "NS", "content": "ns1.example"},
                {"qtype": "PTR", "content": "ptr.example."},
                {"qtype": "TXT", "text_list": ["v=spf1 -all", "second"]},
                {"qtype": "TXT", "content": "one"},
                {"qtype": "URELAY-A6-SYNTH", "content": None, "a6_synth": "0x5ff700100000003"},
                {"qtype": "URELAY-A6-SYNTH", "a6_synth": 42, "ttl": 0},
            ),
            (
                AddressRecord(IPv6Address("2001:db8::1")),
                FALL_THROUGH,
                AddressRecord(IPv4Address("192.0.2.1")),
                AddressRecord(IPv6Address("2001:db8::2"), 300),
                NameRecord("CNAME", "target.example"),
                NameRecord("NS", "ns1.example"),
                NameRecord("PTR", "ptr.example"),
                TextRecord(("v=spf1 -all", "second")),
                TextRecord(("one",)),
                PrefixRecord(0x5FF700100000003),
                PrefixRecord(42, 0),
            ),
        )

    def test_no_records(self):
        """An empty list: the name exists and has no records (UR answers nothing)."""
        self.assertEqual(self.records(), ())

    def test_lookup(self):
        """records() normalises the name; a name without an entry gives None."""
        static = parse_static_map('{"dns_map": [["Host.Example", ["::1"]]]}')
        self.assertEqual(static.records("HOST.example."), (AddressRecord(IPv6Address("::1")),))
        self.assertEqual(static.records("other.example"), None)

    def test_bad_records(self):
        """Records UR would drop or garble are refused, naming the entry and record."""
        for item, reason in [
            ("192.0.2.1", "a bare string is an AAAA record and '192.0.2.1' is not an IPv6"),
            ("fe80::1%eth0", "is not an IPv6 address"),
            ({"qtype": "A", "content": "2001:db8::1"}, "A content '2001:db8::1' is not an IPv4"),
            ({"qtype": "AAAA", "content": "192.0.2.1"}, "is not an IPv6 address"),
            ({"qtype": "AAAA"}, "AAAA content None is not an IPv6 address"),
            ({"qtype": "MX", "content": "10 mx.example"}, "qtype 'MX' is not supported"),
            ({"qtype": "a", "content": "192.0.2.1"}, "qtype 'a' is not supported"),
            ({"content": "192.0.2.1"}, "qtype None is not supported"),
            ({"qtype": "A", "content": "192.0.2.1", "qname": "x"}, "unknown key 'qname'"),
            ({"qtype": "A", "content": "192.0.2.1", "ttl": -1}, "ttl -1 is outside"),
            ({"qtype": "A", "content": "192.0.2.1", "ttl": "soon"}, "ttl 'soon' is not a number"),
            ({"qtype": "CNAME", "content": "bad name"}, "is not a domain name"),
            ({"qtype": "TXT", "text_list": "one"}, "needs text_list"),
            ({"qtype": "TXT", "text_list": ["x" * 256]}, "longer than 255 bytes"),
            ({"qtype": "URELAY-A6-SYNTH", "a6_synth": "0x" + "f" * 17}, "a6_synth"),
            (1, "1 is not a record"),
            (False, "False is not a record"),
            (["::1"], "is not a record"),
        ]:
            with self.subTest(item=item):
                error = self.assertRaises(StaticMapError, self.records, "::2", item)
                self.assertIn(
                    "<static map>: dns_map[0] ('host.example'): record 1: ", str(error)
                )
                self.assertIn(reason, str(error))

    def test_bad_entries(self):
        """The records must be a list; names are checked and unique."""
        for text, reason in [
            (
                '{"dns_map": [["a.example", "::1"]]}',
                "dns_map[0] ('a.example'): the records must be a list",
            ),
            (
                '{"dns_map": [["a.example", ["::1"], 3]]}',
                "dns_map[0]: an entry is [name, [record, ...]]",
            ),
            ('{"dns_map": [["a b", ["::1"]]]}', "dns_map[0]: 'a b' is not a domain name"),
            (
                '{"dns_map": [["a.example", []], ["A.example", []]]}',
                "dns_map[1] ('a.example'): name 'a.example' is already dns_map[0]",
            ),
            ('{"dns_map": {"a.example": ["::1"]}}', "dns_map: must be a list"),
        ]:
            with self.subTest(text=text):
                error = self.assertRaises(StaticMapError, parse_static_map, text)
                self.assertIn(reason, str(error))


class GroupsubTests(SynchronousTestCase):
    """groupsub_map: [[key, {domain_subst | ip_subst}], ...] and i-hx-<key>-<value>."""

    def groups(self, *entries):
        return parse_static_map(json.dumps({"groupsub_map": [list(e) for e in entries]}))

    def test_domain_subst(self):
        """'#' becomes the value as the name writes it; an int value is written in decimal."""
        static = parse_static_map(UR_EXAMPLE)
        self.assertEqual(static.resolve_group("s256", "12"), "apps-vm12.srv.peterjin.org")
        self.assertEqual(static.resolve_group("s256", 65535), "apps-vm65535.srv.peterjin.org")
        self.assertEqual(static.resolve_group("s256", "ab-c"), "apps-vmab-c.srv.peterjin.org")
        self.assertEqual(
            self.groups(["7", {"domain_subst": "#.#.example"}]).resolve_group(7, "x"),
            "x.x.example",
        )

    def test_domain_subst_literal(self):
        """A substitution that spells an address gives the address, as UR's setDomain does."""
        static = self.groups(["net", {"domain_subst": "10.0.0.#"}])
        self.assertEqual(static.resolve_group("net", "5"), IPv4Address("10.0.0.5"))
        error = self.assertRaises(GroupError, static.resolve_group, "net", "x%y")
        self.assertIn("group 'net'", str(error))

    def test_hosts_ip_subst(self):
        """
        hosts_parser.py's group: ["hosts", {"ip_subst": "::/0"}], values in
        0x hex, IPv4 as ::ffff:a.b.c.d.
        """
        static = parse_static_map(UR_COMBINED)
        self.assertEqual(
            static.resolve_group("hosts", "0xffffc0a80105"), IPv4Address("192.168.1.5")
        )
        self.assertEqual(
            static.resolve_group("hosts", "0x20010db8000000000000000000000001"),
            IPv6Address("2001:db8::1"),
        )
        self.assertEqual(static.resolve_group("hosts", "1"), IPv6Address("::1"))

    def test_ipv4_ip_subst(self):
        """An IPv4 network takes the value in its host bits; a decimal key is numbered."""
        static = self.groups(["10", {"ip_subst": "10.1.0.0/16"}])
        self.assertEqual(
            static.groups["10"].ip, IPSubst(IPv4Network("10.1.0.0/16"), IPv4Address("10.1.0.0"))
        )
        self.assertEqual(dict(static.numbered_groups), {10: static.groups["10"]})
        self.assertEqual(static.resolve_group(10, 258), IPv4Address("10.1.1.2"))
        self.assertEqual(static.resolve_group("10", "0x0102"), IPv4Address("10.1.1.2"))
        self.assertEqual(static.resolve_group("10", "0b11"), IPv4Address("10.1.0.3"))
        self.assertEqual(static.resolve_group("10", "0o17"), IPv4Address("10.1.0.15"))
        self.assertEqual(static.resolve_group("10", "010"), IPv4Address("10.1.0.10"))
        for value in (65536, "0x10000", "abc", "1e3", "-1", "", "1_0"):
            with self.subTest(value=value):
                error = self.assertRaises(GroupError, static.resolve_group, 10, value)
                self.assertIn("group '10'", str(error))

    def test_host_bits_kept(self):
        """Like UR, the value is ORed into the address as written."""
        static = self.groups(["h", {"ip_subst": "192.0.2.1/24"}])
        self.assertEqual(static.resolve_group("h", "4"), IPv4Address("192.0.2.5"))

    def test_both(self):
        """With both, a value starting with a digit is an address, any other a name."""
        static = self.groups(["vm", {"ip_subst": "2001:db8::/64", "domain_subst": "#.vm.example"}])
        self.assertEqual(static.resolve_group("vm", "0x10"), IPv6Address("2001:db8::10"))
        self.assertEqual(static.resolve_group("vm", "web"), "web.vm.example")
        self.assertRaises(GroupError, static.resolve_group, "vm", "1x")

    def test_scope(self):
        """ipv6_scope applies to a link-local result."""
        static = self.groups(
            ["ll", {"ip_subst": "fe80::/64", "ipv6_scope": "eth0"}],
            ["gl", {"ip_subst": "2001:db8::/64", "ipv6_scope": "eth0"}],
        )
        result = static.resolve_group("ll", "1")
        self.assertEqual((result, result.scope_id), (IPv6Address("fe80::1%eth0"), "eth0"))
        self.assertEqual(static.resolve_group("gl", "1").scope_id, None)

    def test_numbering(self):
        """Only decimal keys without leading zeros (and s-keys) are reachable from addresses."""
        static = self.groups(
            *[
                [key, {"domain_subst": "#.example"}]
                for key in ("0", "65535", "65536", "007", "s0", "s01", "hosts")
            ]
        )
        self.assertEqual(sorted(static.numbered_groups), [0, 65535])
        self.assertEqual(sorted(static.short_groups), [0])

    def test_unknown_group(self):
        """A group the map lacks is a GroupError saying so."""
        static = parse_static_map(UR_EXAMPLE)
        error = self.assertRaises(GroupError, static.resolve_group, 256, 1)
        self.assertEqual(str(error), "groupsub_map has no entry '256'")

    def test_bad_entries(self):
        """Keys that never match, unsupported and unknown settings are refused with reasons."""
        for entry, reason in [
            ([256, {"domain_subst": "#.example"}], "groupsub_map[0]: key 256 can never match"),
            (["Hosts", {"domain_subst": "#.example"}], "key 'Hosts' can never match"),
            (["a-b", {"domain_subst": "#.example"}], "key 'a-b' can never match"),
            (["g", {"socks_server": {"path": "/run/tor.sock"}, "domain_subst": "#"}],
             "groupsub_map[0] ('g'): socks_server is not supported by urelay"),
            (
                ["g", {"ip_subst": "::/0", "bind_addr6": "2001:db8::1"}],
                "bind_addr6 is not supported",
            ),
            (["g", {"ip_subst": "::/0", "dns": "x"}], "unknown key 'dns'"),
            (["g", {}], "needs domain_subst or ip_subst"),
            (["g", {"ipv6_scope": "eth0"}], "needs domain_subst or ip_subst"),
            (["g", "#.example"], "is not an object"),
            (["g", {"domain_subst": 5}], "domain_subst 5 is not a string"),
            (["g", {"domain_subst": "a b.#"}], "does not make a domain name"),
            (["g", {"ip_subst": "10.0.0.0/40"}], "is not an address or CIDR prefix"),
            (["g", {"ip_subst": "10.0.0.0/255.0.0.0"}], "prefix length must be a number"),
            (["g", {"ip_subst": "fe80::%eth0/64"}], "is not an address or CIDR prefix"),
            (["g", {"ip_subst": "example.com/24"}], "is not an address or CIDR prefix"),
            (["g", {"ip_subst": "::/0", "ipv6_scope": "eth 0"}], "ipv6_scope 'eth 0'"),
            (["g", {"domain_subst": "#"}, "extra"], "an entry is [key, {...}]"),
        ]:
            with self.subTest(entry=entry):
                error = self.assertRaises(StaticMapError, self.groups, entry)
                self.assertIn(reason, str(error))
        error = self.assertRaises(
            StaticMapError,
            self.groups,
            ["g", {"domain_subst": "#.a"}],
            ["g", {"domain_subst": "#.b"}],
        )
        self.assertIn("groupsub_map[1] ('g'): key 'g' is already groupsub_map[0]", str(error))


class FileTests(SynchronousTestCase):
    """Whole-file problems name the file."""

    def test_missing(self):
        path = self.mktemp()
        error = self.assertRaises(StaticMapError, load_static_map, path)
        self.assertTrue(str(error).startswith(f"{path}: cannot read: "), str(error))

    def test_not_json(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"relay_map": [["a.example", 1],]}')
        error = self.assertRaises(StaticMapError, load_static_map, path)
        self.assertTrue(str(error).startswith(f"{path}: not JSON: "), str(error))
        self.assertIn("line 1 column", str(error))

    def test_undecodable(self):
        error = self.assertRaises(StaticMapError, parse_static_map, b'{"relay_map": [["\xff", 1]]}')
        self.assertIn("not JSON", str(error))

    def test_not_object(self):
        for text in ("[]", "null", '"relay_map"'):
            error = self.assertRaises(StaticMapError, parse_static_map, text, "m.json")
            self.assertIn("m.json: the top level must be an object", str(error))

    def test_unknown_section(self):
        error = self.assertRaises(StaticMapError, parse_static_map, '{"relay_maps": []}', "m.json")
        self.assertTrue(str(error).startswith("m.json: unknown section 'relay_maps'"), str(error))

    def test_ignored_section_shape(self):
        error = self.assertRaises(StaticMapError, parse_static_map, '{"do_map": {}}')
        self.assertIn("do_map: must be a list", str(error))

    def test_duplicate_json_key(self):
        """JSON itself would keep the last of two keys silently; the map refuses."""
        error = self.assertRaises(
            StaticMapError, parse_static_map, '{"relay_map": [], "relay_map": [["a.example", 1]]}'
        )
        self.assertIn("'relay_map' appears twice", str(error))

    def test_nan(self):
        error = self.assertRaises(
            StaticMapError, parse_static_map, '{"relay_map": [["a.example", NaN]]}'
        )
        self.assertIn("NaN is not JSON", str(error))


class NormaliseTests(SynchronousTestCase):
    def test_normalise(self):
        self.assertEqual(normalise_name("WWW.Example.COM."), "www.example.com")
        self.assertEqual(normalise_name("_dmarc.x-y.example"), "_dmarc.x-y.example")
        too_long = ("a." * 127) + "a"
        for bad in ("", ".", "a..b", "a b", "\u212aelvin.example", "a" * 64, too_long, None):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, normalise_name, bad)
