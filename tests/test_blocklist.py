"""Blocklist files in the formats Pi-hole and AdGuard lists are published in."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.codecs.blocklist import HOST_NAMES, Parsed, normal_name, parse

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=5).map(".".join)


class FormatTests(SynchronousTestCase):
    def test_hosts_file(self):
        text = """\
# Title: a hosts list
127.0.0.1 localhost
127.0.0.1 localhost.localdomain
255.255.255.255 broadcasthost
::1 localhost ip6-localhost ip6-loopback
0.0.0.0 0.0.0.0
0.0.0.0 ads.example.com
127.0.0.1\tTracker.Example.NET.   # trailing comment
::1 a.example b.example c.example
0.0.0.0 x.example y.example#no space before the comment
"""
        self.assertEqual(
            parse(text.splitlines(keepends=True)),
            Parsed(
                names=("ads.example.com", "tracker.example.net", "a.example", "b.example", "c.example", "x.example", "y.example")
            ),
        )

    def test_plain_list(self):
        text = ["# comment\n", "\n", "  ads.example  \n", "Tracker.Example.\r\n", "_dmarc-x.example\n"]
        self.assertEqual(parse(text), Parsed(names=("ads.example", "tracker.example", "_dmarc-x.example")))

    def test_adguard_basic_and_wildcards(self):
        text = ["[Adblock Plus 2.0]", "! Title: AdGuard DNS filter", "||ads.example^", "*.cdn.example", "||x.example^  # c"]
        self.assertEqual(parse(text), Parsed(names=("ads.example", "x.example"), below=("cdn.example",)))

    def test_invalid_lines_counted_with_numbers(self):
        text = [
            "ok.example",
            "@@||allowed.example^",
            "||ads.example^$third-party",
            "http://ads.example/path",
            "0.0.0.0",
            "999.1.1.1 name.example",
            "bad..example",
            "-leading.example",
            "0.0.0.0 fine.example bad_name!.example",
            "ünïcode.example",
            "a" * 64 + ".example",
            ".".join(["a" * 63] * 4) + ".example",
            "10.0.0.1",
        ]
        parsed = parse(text)
        self.assertEqual(parsed.names, ("ok.example", "fine.example"))
        self.assertEqual([number for number, line in parsed.invalid], list(range(2, 14)))
        self.assertEqual(parsed.invalid[0], (2, "@@||allowed.example^"))

    def test_host_names_skipped_in_every_form(self):
        self.assertEqual(parse([f"{name}\n" for name in sorted(HOST_NAMES - {"0.0.0.0"})]), Parsed())
        self.assertEqual(parse(["||localhost^"]), Parsed())

    @given(st.lists(names, max_size=20))
    def test_every_format_gives_the_names(self, listed):
        listed = [name for name in listed if name not in HOST_NAMES]
        plain = parse([f"{name}\n" for name in listed])
        hosts = parse([f"0.0.0.0 {name}\n" for name in listed])
        adguard = parse([f"||{name}^\n" for name in listed])
        self.assertEqual(plain, Parsed(names=tuple(listed)))
        self.assertEqual(hosts, plain)
        self.assertEqual(adguard, plain)

    @given(st.lists(st.text(max_size=80), max_size=20))
    def test_any_text_never_raises(self, lines):
        parsed = parse(lines)
        for name in (*parsed.names, *parsed.below):
            self.assertEqual(normal_name(name), name)
