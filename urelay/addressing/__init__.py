"""The address plan: the cookie prefix and its regions, the keyed cookie permutation, NAT64 (RFC 6052), Universal Relay's static maps.

May import: urelay.codecs, urelay.values. Never twisted.
"""
