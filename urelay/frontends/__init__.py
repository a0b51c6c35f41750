"""Where clients come in: the session every frontend hands its client to, SOCKS, transparent and PROXY-protocol listeners, SOCKS logins.

May import: urelay.upstream, urelay.relay and below; not urelay.dns.
"""
