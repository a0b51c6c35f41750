"""The fake DNS authority: what it answers, who may ask, its per-client bounds, and its UDP and TCP servers.

May import: urelay.upstream, urelay.relay and below; not urelay.frontends.
"""
