"""Plain frozen values every layer passes around: what a client asked to reach (Destination, ClientAddress), how it is reached (Route), why a connection failed (FailureKind, NotAllowed), where an upstream socket leaves from (Placement), why a setting's text was refused (InvalidValue) and the parsers every configuration grammar shares.

May import: nothing of urelay, and never twisted.
"""
