"""Running urelay: the configuration (its schema and loader, its values, the value parsers), the service that assembles everything, the command line, the control API, the static map manager.

May import: everything. Only the service (and the twistd plugin) touches the global reactor.
"""
