"""Sans-I/O byte codecs: SOCKS 4/4a/5 (server and client), PROXY v1/v2, the DNS wire format, SVCB/HTTPS RDATA, SNI/Host sniffing, u-relay.home.arpa names.

May import: urelay.values. Never twisted: bytes in, events and bytes out.
"""
