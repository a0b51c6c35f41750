"""How urelay reaches a destination: the router, Happy Eyeballs, the SOCKS5 chain, TLS, Unix sockets, upstream name resolution, socket placement.

May import: urelay.policy and below; not urelay.relay.
"""
