"""What urelay tells its operator: log messages and their level, metrics, the connection log, text forms of addresses.

May import: urelay.addressing, urelay.codecs, urelay.values; twisted.logger.
"""
