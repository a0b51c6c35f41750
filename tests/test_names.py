"""Name policy: the blocklist set looked up by suffix, loading files, and the names rules block in DNS."""

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from urelay.policy.grammar import parse_match
from urelay.policy.names import Blocklist, FileReport, NamePolicy, NameSet, RuleBlocks, read_files
from urelay.policy.rules import Rule
from urelay.policy.rewrites import Suffix
from urelay.values.route import DIRECT, Block

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
names = st.lists(labels, min_size=1, max_size=5).map(".".join)


class NameSetTests(SynchronousTestCase):
    def test_name_and_below(self):
        names = NameSet(["ads.example", "tracker.net"], below=["cdn.example"])
        self.assertEqual(len(names), 3)
        self.assertEqual(names.match("ads.example"), "ads.example")
        self.assertEqual(names.match("x.y.ads.example"), "ads.example")
        self.assertEqual(names.match("tracker.net"), "tracker.net")
        self.assertIsNone(names.match("example"))
        self.assertIsNone(names.match("bads.example"))
        self.assertIsNone(names.match("ads.example.org"))
        self.assertIsNone(names.match("cdn.example"))
        self.assertEqual(names.match("a.cdn.example"), "*.cdn.example")

    def test_empty(self):
        self.assertIsNone(NameSet().match("anything.example"))

    @given(st.sets(names, max_size=30), names)
    def test_suffix_lookup_is_label_suffix_membership(self, listed, name):
        labels = name.split(".")
        suffixes = {".".join(labels[i:]) for i in range(len(labels))}
        found = NameSet(listed).match(name)
        if suffixes & listed:
            self.assertIn(found, suffixes & listed)
        else:
            self.assertIsNone(found)

    @given(st.sets(names, max_size=30), names, names)
    def test_listed_blocks_every_name_below(self, listed, left, right):
        self.assertIsNotNone(NameSet(listed | {right}).match(f"{left}.{right}"))


class ReadFilesTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_several_files_and_reports(self):
        hosts = self.write("0.0.0.0 a.example b.example\nnot a line\n")
        plain = self.write("c.example\n*.d.example\n")
        with open(plain, "ab") as f:
            f.write(b"\xff\xfe.example\n")
        loaded = read_files([hosts, plain])
        self.assertEqual(len(loaded.names), 4)
        self.assertEqual(loaded.names.match("x.d.example"), "*.d.example")
        self.assertEqual(
            loaded.files,
            (FileReport(hosts, 2, 1, (2, "not a line")), FileReport(plain, 2, 1, (3, "\ufffd\ufffd.example"))),
        )

    def test_missing_file_raises(self):
        self.assertRaises(OSError, read_files, [os.path.join(self.mktemp(), "nope")])

    def test_blocklist_swaps_whole(self):
        blocklist = Blocklist()
        self.assertIsNone(blocklist.listed("a.example"))
        blocklist.replace(read_files([self.write("a.example\n")]))
        self.assertEqual((blocklist.listed("a.example"), len(blocklist), blocklist.generation), ("a.example", 1, 1))


def rule(name, match="", route=Block(), **values):
    return Rule(name=name, match=parse_match(match), route=route, **values)


class RuleBlocksTests(SynchronousTestCase):
    """Which block rules DNS applies: those that refuse every connection to the name."""

    def test_domain_only_block(self):
        blocks = RuleBlocks([rule("ads", "domain .ads.example exact.example")])
        self.assertEqual(blocks.rule_for("ads.example"), "ads")
        self.assertEqual(blocks.rule_for("x.ads.example"), "ads")
        self.assertEqual(blocks.rule_for("exact.example"), "ads")
        self.assertIsNone(blocks.rule_for("x.exact.example"))
        self.assertIsNone(blocks.rule_for("other.example"))

    def test_block_without_criteria_blocks_every_name(self):
        self.assertEqual(RuleBlocks([rule("all")]).rule_for("any.example"), "all")

    def test_conditional_block_rules_do_not_apply(self):
        for match in ("domain .ads.example port 443", "domain .ads.example client 10.0.0.0/8", "listener socks", "tag t1"):
            self.assertIsNone(RuleBlocks([rule("some", match)]).rule_for("ads.example"), match)

    def test_an_earlier_deciding_rule_wins(self):
        rules = [rule("ok", "domain .good.ads.example", route=DIRECT), rule("ads", "domain .ads.example")]
        self.assertIsNone(RuleBlocks(rules).rule_for("good.ads.example"))
        self.assertEqual(RuleBlocks(rules).rule_for("bad.ads.example"), "ads")
        # even one deciding for some connections only
        rules = [rule("web", "port 443", route=DIRECT), rule("ads", "domain .ads.example")]
        self.assertIsNone(RuleBlocks(rules).rule_for("ads.example"))

    def test_rewrites_and_hooks_end_the_walk(self):
        rules = [rule("moved", "domain .ads.example", route=None, rewrites=(Suffix(".elsewhere"),)), rule("all")]
        self.assertIsNone(RuleBlocks(rules).rule_for("ads.example"))
        self.assertEqual(RuleBlocks(rules).rule_for("other.example"), "all")
        hooked = [rule("hook", route=Block(), hook=lambda destination: None)]
        self.assertIsNone(RuleBlocks(hooked).rule_for("ads.example"))

    def test_passed_over(self):
        rules = [
            rule("lan", "ip 10.0.0.0/8", route=DIRECT),
            rule("noted", "domain .ads.example", route=None),
            rule("some", "port 80", route=Block()),
            rule("ads", "domain .ads.example"),
        ]
        self.assertEqual(RuleBlocks(rules).rule_for("ads.example"), "ads")

    def test_home_arpa_and_reverse_names_never(self):
        for name in ("ip4-192-0-2-1.u-relay.home.arpa", "u-relay.home.arpa", "1.2.0.192.in-addr.arpa", "ip6.arpa", "", "arpa"):
            self.assertIsNone(RuleBlocks([rule("all")]).rule_for(name), name)


class NamePolicyTests(SynchronousTestCase):
    def test_rules_then_lists(self):
        blocklist = Blocklist()
        blocklist.replace(read_files([self._write("listed.example\nip4-1-2-3-4.u-relay.home.arpa\nin-addr.arpa\n")]))
        policy = NamePolicy([rule("ads", "domain .ads.example")], blocklist)
        self.assertEqual(policy.blocked("x.ads.example"), "rule ads")
        self.assertEqual(policy.blocked("a.listed.example"), "blocklist entry listed.example")
        self.assertIsNone(policy.blocked("fine.example"))
        self.assertIsNone(policy.blocked("ip4-1-2-3-4.u-relay.home.arpa"))
        self.assertIsNone(policy.blocked("4.3.2.1.in-addr.arpa"))
        self.assertEqual(policy.generation, 1)

    def _write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path
