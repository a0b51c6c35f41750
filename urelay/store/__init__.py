"""The mappings: which cookie each name was handed (in memory and on disk), the IPv4 pool, and the address book (the one reader of what an address stands for).

May import: urelay.platform and below.
"""
