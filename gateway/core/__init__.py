"""The pure core: the rules and the storage interface, with what works on them alone.

Paths and their confinement, routing, listings, the error taxonomy (each error is its FTP
reply), the storage interface and its in-memory implementation, names, modes, checksums,
PROXY headers, log escaping, password hashes. Imports neither pyftpdlib nor asyncssh, nor
any other package of the gateway but ``gateway.config`` (tests/unit/test_layering.py).
"""
