"""urelay: a SOCKS and transparent TCP relay with a programmable fake DNS authority."""

__version__ = "0.1.0"
