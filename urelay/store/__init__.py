"""The mappings: which cookie each name was handed (in memory, on disk, and in PostgreSQL for several relays), the IPv4 pool, and the address book (the one reader of what an address stands for).

May import: urelay.platform and below.
"""
