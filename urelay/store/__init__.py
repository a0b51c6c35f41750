"""The mappings: which cookie each name was handed (in memory and on disk), the IPv4 pool, and the one decoder of what an address stands for.

May import: urelay.platform and below.
"""
