"""What may happen: the rule chain (match, rewrite, route) and its grammar in the configuration, the client networks every allow list and rule matches clients by, the guard that judges every destination address, admission bounds per client, the SOCKS users file.

May import: urelay.store and below.
"""
