"""SOCKS 4, 4a and 5: the sans-I/O codec and the Twisted frontend built on it."""
