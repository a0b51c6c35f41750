"""Moving bytes between a client and its upstream once both are connected: through Twisted transports, or outside Twisted (copy, splice).

May import: urelay.policy and below; not urelay.upstream.
"""
