"""The FTP side's command rules, pure: which verbs a route may not take away, how LIST/NLST
arguments are read, what cancels a queued transfer, the limits on command lines.

No pyftpdlib here: ``gateway.ftp.handler`` applies these rules to the session.
"""

from __future__ import annotations

import re

#: Commands whose argument may start with ls-style options that clients send (``LIST -la``,
#: ``NLST -1``): the options are dropped, what follows is the path.
LS_COMMANDS = ("LIST", "NLST", "STAT")
#: Commands that cancel a transfer announced with 150 whose data connection never came
#: (pyftpdlib would otherwise keep it queued and run it on the *next* data connection).
CANCELS_QUEUED_TRANSFER = frozenset(
    {
        *("ABOR", "REIN", "USER"),
        *("PASV", "EPSV", "PORT", "EPRT"),
        *("RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"),
    }
)


#: Telnet commands at the start of a line (RFC 854): IAC followed by a command byte, or by
#: WILL/WONT/DO/DONT and an option byte.
TELNET_COMMANDS = re.compile(rb"^(?:\xff[\xfb-\xfe][\x00-\xff]|\xff[\xf0-\xfa])+")

#: A time argument: YYYYMMDDhhmm[ss] (UTC).
TIMESTAMP = re.compile(r"\d{12}(\d\d)?")

#: Commands that create a name from their argument's last component (STOU: a prefix).
CREATES_NAME = frozenset({"STOR", "APPE", "STOU", "MKD", "XMKD", "RNTO"})

#: Commands of one transfer's sequence (lftp and FileZilla: SIZE, MDTM, PASV, RETR; after a
#: STOR: MFMT): attributes the previous command fetched still answer these, so the sequence
#: stats a file once (RETR opens with them, then drops them). Any other command starts
#: afresh: other SFTP users' changes show at once.
KEEPS_ATTRS = frozenset({"SIZE", "MDTM", "MFMT", "PASV", "EPSV", "PORT", "EPRT", "TYPE", "REST", "RETR"})


def governing_verb(cmd: str, arg: str) -> str:
    """The verb a route's ``permissions.commands`` must allow for ``cmd arg``.

    STAT with a path lists it on the control channel (RFC 959): the same information as
    LIST, so it takes LIST's permission; plain STAT (the server's status) is always allowed.
    """
    return "LIST" if cmd == "STAT" and ls_options(arg)[1] else cmd


#: pyftpdlib's limit on a command line (longer ones get "500 Command too long.").
LINE_LIMIT = 2048
#: Verbs a route's `permissions.commands` list cannot take away (session plumbing).
ALWAYS_ALLOWED = frozenset(
    {
        "USER",
        "PASS",
        "QUIT",
        "NOOP",
        "FEAT",
        "SYST",
        "TYPE",
        "PASV",
        "EPSV",
        "PORT",
        "EPRT",
        "PWD",
        "XPWD",
        "OPTS",
        "REIN",
        "ABOR",
        "STAT",
        "HELP",
        "AUTH",
        "PBSZ",
        "PROT",
        "MODE",
        "STRU",
        "CLNT",
        "CSID",
    }
)

#: Overlong command lines tolerated per session before 421 (a line of 6 KiB already is three).
MAX_LONG_LINES = 3

#: STAT <dir> sends its listing over the control channel; longer listings are cut here.
STAT_MAX_LINES = 1000


def ls_options(arg: str) -> tuple[frozenset[str], str]:
    """(option letters, path) of a LIST/NLST/STAT argument: ``-la`` style words first, as ls takes them.

    The path is the rest as the client sent it: blanks at its ends may be part of a name.
    """
    letters: set[str] = set()
    rest = arg
    while len(rest) > 1 and rest[0] == "-":
        word, _, after = rest.partition(" ")
        if not word[1:].isalnum():
            break
        letters.update(word[1:])
        rest = after
    return frozenset(letters), rest if rest.strip() else ""


def nlst_prefix(directory: str) -> str:
    """What NLST puts before each name listed from ``directory`` (as the client named it)."""
    return directory.rstrip("/") + "/" if directory else ""
