"""Everything that touches the operating system or Twisted's internals: network namespaces, rtnetlink, listening sockets, process limits, writing to a socket directly, taking sockets out of Twisted for a relay.

May import: urelay.observe and below. The only layer allowed Twisted's private attributes.
"""
