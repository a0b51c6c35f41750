"""What the DNS authority, the DNS server and the address book do with a shared mapping store (ISharedMappingStore) that must ask elsewhere, sans-I/O: a store whose answers the test gives."""

from __future__ import annotations

from ipaddress import IPv6Network

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from urelay.addressing.plan import AddressPlan
from urelay.addressing.staticmap import EMPTY, parse_static_map
from urelay.codecs import dns as wire
from urelay.codecs import svcb
from urelay.dns.authority import Authority
from urelay.dns.server import respond
from urelay.store.addressbook import AddressBook
from urelay.store.mappings import ISharedMappingStore, MemoryStore, StoreUnavailable
from urelay.values.destination import Destination
from urelay.values.failures import UnknownDestination
from tests.support.dns import query

PREFIX = IPv6Network("fedb:1200:4500:7800::/64")


@implementer(ISharedMappingStore)
class LaterStore(MemoryStore):
    """
    A shared store whose database is the test: a name it does not hold
    waits in C{asked} until L{answer} (which allocates it here) or
    L{refuse}; C{elsewhere} maps cookies another relay handed out to
    their names.
    """

    def __init__(self, clock):
        super().__init__(clock)
        self.asked: dict[str, Deferred] = {}
        self.elsewhere: dict[int, str] = {}
        self.down = False

    def cookie_for(self, name):
        if name in self._by_name:
            return super().cookie_for(name)
        return self.asked.setdefault(name, Deferred())

    def answer(self, name):
        self.asked.pop(name).callback(super().cookie_for(name))

    def refuse(self, name):
        self.asked.pop(name).errback(StoreUnavailable("test", "down"))

    def fetch_name(self, iid):
        if self.down:
            return fail(StoreUnavailable("test", "down"))
        return succeed(self.name_for(iid) or self.elsewhere.get(iid))


class Upstream:
    def __init__(self):
        self.answers = {}

    def query(self, q, timeout=None):
        return succeed((self.answers.get((q.name.name.decode(), q.type), []), [], []))


def param(key: int, value: bytes) -> bytes:
    return key.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


class AuthorityTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.plan = AddressPlan(PREFIX)
        self.store = LaterStore(self.clock)
        self.upstream = Upstream()
        static = parse_static_map('{"dns_map": [["both.example", [{"qtype": "A", "content": "192.0.2.10"}, null]]]}')
        self.authority = Authority(
            AddressBook(self.plan, self.store, static), ttl=60, clock=self.clock, upstream=self.upstream
        )

    def test_cookie_after_the_store_answers(self):
        """
        A name the store must ask for is answered when it answers, and
        that answer is not kept; the next one, from memory, is.
        """
        answer, key, check = self.authority.answer_to_keep(query("new.example", wire.TYPE_AAAA))
        self.assertIsInstance(answer, Deferred)
        self.assertEqual((key, check), (("AAAA", "cookie"), None))
        self.assertNoResult(answer)
        self.store.answer("new.example")
        [record] = self.successResultOf(answer).answers
        self.assertEqual(record.rdata, wire.aaaa_rdata(self.plan.cookie_address(self.store.peek_cookie("new.example"))))
        again, _, check = self.authority.answer_to_keep(query("new.example", wire.TYPE_AAAA))
        self.assertEqual(again.answers, (record,))
        self.assertTrue(check())

    def test_refused_by_the_store(self):
        answer = self.authority.answer(query("new.example", wire.TYPE_AAAA))
        self.store.refuse("new.example")
        self.failureResultOf(answer, StoreUnavailable)

    def test_static_records_falling_through(self):
        """A dns_map name that also has a cookie gets both, once the store answers."""
        answer = self.authority.answer(query("both.example", wire.TYPE_ANY))
        self.store.answer("both.example")
        types = sorted(r.rtype for r in self.successResultOf(answer).answers)
        self.assertEqual(types, [wire.TYPE_A, wire.TYPE_AAAA])

    def test_https_hints_wait_for_the_cookie(self):
        """
        The hints of an HTTPS record are the name's own cookie: upstream is
        asked once the store has given it.
        """
        rdata = b"\x00\x01\x00" + param(6, bytes(16))
        self.upstream.answers[("www.example", wire.TYPE_HTTPS)] = [
            tdns.RRHeader("www.example", wire.TYPE_HTTPS, tdns.IN, 300, tdns.UnknownRecord(rdata))
        ]
        answer = self.authority.answer(query("www.example", wire.TYPE_HTTPS))
        self.assertNoResult(answer)
        self.store.answer("www.example")
        [record] = self.successResultOf(answer).answers
        cookie = self.plan.cookie_address(self.store.peek_cookie("www.example"))
        self.assertEqual(svcb.parse(record.rdata).params, ((6, cookie.packed),))


class ServerTests(SynchronousTestCase):
    def test_servfail_without_a_traceback(self):
        """
        A new name the store cannot allocate now gets SERVFAIL, and the log
        gets no failure (the store says it once itself).
        """
        store = LaterStore(Clock())
        authority = Authority(AddressBook(AddressPlan(PREFIX), store, EMPTY), ttl=60, clock=Clock())
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        request = tdns.Message(id=7, recDes=True)
        request.queries = [tdns.Query("new.example", tdns.AAAA)]
        replies = []
        respond(authority, request.toStr(), None, replies.append)
        self.assertEqual(replies, [])
        store.refuse("new.example")
        response = tdns.Message()
        response.fromStr(replies[0])
        self.assertEqual((response.id, response.rCode), (7, tdns.ESERVER))
        self.assertEqual([e for e in events if "log_failure" in e], [])


class AddressBookTests(SynchronousTestCase):
    def setUp(self):
        self.plan = AddressPlan(PREFIX)
        self.store = LaterStore(Clock())
        self.book = AddressBook(self.plan, self.store, EMPTY)

    def test_cookie_handed_out_elsewhere(self):
        """A cookie the relay does not hold is looked up in the store."""
        iid = 0x0700_0000_0000_0001
        self.store.elsewhere[iid] = "far.example"
        decoded = self.book.decode(Destination(address=self.plan.cookie_address(iid), port=80))
        self.assertEqual(self.successResultOf(decoded), Destination(name="far.example", port=80))

    def test_cookie_of_a_home_arpa_name(self):
        iid = 0x0700_0000_0000_0002
        self.store.elsewhere[iid] = "ip4-192-0-2-1.u-relay.home.arpa"
        decoded = self.successResultOf(self.book.decode(Destination(address=self.plan.cookie_address(iid), port=80)))
        self.assertEqual(str(decoded.address), "192.0.2.1")

    def test_cookie_nobody_handed_out(self):
        decoded = self.book.decode(Destination(address=self.plan.cookie_address(0x0700_0000_0000_0003), port=80))
        self.failureResultOf(decoded, UnknownDestination)

    def test_store_unavailable(self):
        """While the store cannot be asked, such a cookie is an unknown destination, saying why."""
        self.store.down = True
        decoded = self.book.decode(Destination(address=self.plan.cookie_address(0x0700_0000_0000_0004), port=80))
        failure = self.failureResultOf(decoded, UnknownDestination)
        self.assertIn("cannot look the cookie up now", failure.getErrorMessage())

    def test_held_cookie_at_once(self):
        """A cookie the relay holds decodes without a Deferred."""
        self.store.asked["held.example"] = Deferred()
        self.store.answer("held.example")
        iid = self.store.peek_cookie("held.example")
        decoded = self.book.decode(Destination(address=self.plan.cookie_address(iid), port=443))
        self.assertEqual(decoded, Destination(name="held.example", port=443))
