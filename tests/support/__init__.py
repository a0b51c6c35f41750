"""
What the tests share: real peers and urelay started as programs (peers), SOCKS peers
(socks_peers), network namespaces (netns, netns_servers), fake logs, connectors, decoders and
routes (fakes), test clients (clients), configuration test cases (config), DNS queries (dns),
relay test peers (relaypeers) and the suites both relays run (relay_suites).

Test modules import helpers from here, never from each other (tests/test_layers.py checks).
"""
