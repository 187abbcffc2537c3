"""Migration readiness: what each FTP session did, kept in SQLite, judged per user.

``session`` records one FTP session's fingerprint, ``clients`` tells the client software
from its habits, ``store`` keeps daily totals in SQLite, ``readiness`` turns them into
verdicts and ``render`` prints them. None of it imports pyftpdlib or asyncssh.
"""
