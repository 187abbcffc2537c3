"""Which FTP client software a session used, told from its first commands.

A client that names itself (CLNT, or Serv-U's CSID) is taken at its word. Otherwise each
client has habits that show in the first commands of a session: what it sends before USER,
what right after login, whether it asks for the data connection before or after TYPE, how
it spells OPTS. The habits below were captured from the real clients (curl 7.88, lftp
4.9.2, NcFTP 3.2.6, GNU inetutils ftp 2.4, CPython ftplib) and, for the ones that do not
run here, read from their sources (see docs/migration.md, "Migration readiness report"). A session that
matches no habit is "unknown"; a guess never blocks anything, it only labels the report.
Since the gateway lists CLNT in FEAT, lftp, FileZilla and WinSCP name themselves (ncftp
always does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: (command name, argument) as the session sent them, PASS without its argument.
Lines = Sequence[tuple[str, str]]

_DATA_SETUP = frozenset({"PASV", "EPSV", "PORT", "EPRT"})
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_+]*")
_VERSION = re.compile(r"\d+(?:\.\d+)+[a-z]?")
_CSID_JUNK = re.compile(r"[^A-Za-z0-9 ._+-]")
#: Longest client name kept from a CLNT/CSID text.
MAX_NAME = 40
#: CLNT/CSID product words -> the name the report uses.
_PRODUCTS = {
    "ncftp": "ncftp",
    "ncftpget": "ncftp",
    "ncftpput": "ncftp",
    "ncftpls": "ncftp",
    "lftp": "lftp",
    "filezilla": "FileZilla",
    "winscp": "WinSCP",
}


@dataclass(frozen=True)
class _Probe:
    before: list[tuple[str, str]]  # commands before the first PASS
    after: list[tuple[str, str]]  # commands after it

    @property
    def before_verbs(self) -> list[str]:
        return [verb for verb, _ in self.before]

    @property
    def after_verbs(self) -> list[str]:
        return [verb for verb, _ in self.after]

    def sent(self, verb: str, arg: str | None = None) -> bool:
        return any(v == verb and (arg is None or a == arg) for v, a in [*self.before, *self.after])

    def first_after(self, *skip: str) -> str:
        """The first command after login that is not one of ``skip``."""
        return next((v for v in self.after_verbs if v not in skip), "")

    def setup_before_type(self) -> bool:
        """The first data-connection setup (PASV ...) came before the first TYPE."""
        verbs = self.after_verbs
        setup = next((i for i, v in enumerate(verbs) if v in _DATA_SETUP), None)
        kind = next((i for i, v in enumerate(verbs) if v == "TYPE"), None)
        return setup is not None and (kind is None or setup < kind)


def _lftp(p: _Probe) -> bool:
    # FEAT before USER (then CLNT, OPTS UTF8 ON, still before USER); PWD once logged in.
    # (Commons Net with UTF-8 detection also starts with FEAT, but never sends PWD itself.)
    return p.before_verbs[:1] == ["FEAT"] and p.first_after("CLNT", "OPTS", "SITE", "PBSZ", "PROT") == "PWD"


def _ncftp(p: _Probe) -> bool:
    # After login: PWD, FEAT, HELP SITE (then CLNT NcFTP..., which it sends to any server).
    return p.after_verbs[:3] == ["PWD", "FEAT", "HELP"]


def _filezilla(p: _Probe) -> bool:
    # AUTH TLS (then AUTH SSL) even for plain FTP, SYST and FEAT after login.
    return p.after_verbs[:2] == ["SYST", "FEAT"] and "AUTH" in p.before_verbs


def _winscp(p: _Probe) -> bool:
    # As FileZilla (its engine), but no AUTH probe without FTPS configured.
    return p.after_verbs[:2] == ["SYST", "FEAT"]


def _fluentftp(p: _Probe) -> bool:
    # FEAT, [OPTS UTF8 ON], SYST after login (FileZilla/WinSCP: SYST first).
    return p.first_after("PBSZ", "PROT") == "FEAT" and p.first_after("PBSZ", "PROT", "FEAT", "OPTS") == "SYST"


def _windows_ftp_exe(p: _Probe) -> bool:
    # OPTS UTF8 ON right after the banner; RFC 775 X-verbs (XPWD, XMKD, XRMD).
    return p.before_verbs[:1] == ["OPTS"] or any(v in ("XPWD", "XMKD", "XRMD", "XCWD") for v in p.after_verbs)


def _dotnet(p: _Probe) -> bool:
    # System.Net.FtpWebRequest: "OPTS utf8 on" in lower case, then PWD.
    return p.sent("OPTS", "utf8 on")


def _jdk(p: _Probe) -> bool:
    # java.net.URL's FTP client asks for EPSV ALL before every data connection.
    return p.sent("EPSV", "ALL")


def _curl(p: _Probe) -> bool:
    # After login: PWD, maybe CWDs, then EPSV (or PASV/PORT/EPRT) *before* TYPE.
    return p.first_after("PBSZ", "PROT") == "PWD" and p.setup_before_type() and not p.sent("FEAT")


def _bsd_ftp(p: _Probe) -> bool:
    # GNU inetutils / BSD ftp: SYST before USER (with -n), or SYST then TYPE I after login.
    return p.before_verbs[:1] == ["SYST"] or p.after_verbs[:2] == ["SYST", "TYPE"]


def _commons_net(p: _Probe) -> bool:
    # Apache Commons Net: SYST (to pick a listing parser) right before the first data setup.
    verbs = p.after_verbs
    return any(verbs[i] == "SYST" and verbs[i + 1] in _DATA_SETUP for i in range(len(verbs) - 1))


def _python_ftplib(p: _Probe) -> bool:
    # ftplib sends nothing of its own: after login the first command is what the program
    # asked for, and each transfer is TYPE, then PASV/EPSV, then the data command.
    verbs = p.after_verbs
    before = [verb for verb in p.before_verbs if verb != "AUTH"]  # FTP_TLS: AUTH TLS first
    if not verbs or any(p.sent(verb) for verb in ("FEAT", "SYST", "PWD")) or before[:1] != ["USER"]:
        return False
    return any(verbs[i] == "TYPE" and verbs[i + 1] in ("PASV", "EPSV") for i in range(len(verbs) - 1))


#: First match wins: the most specific habits first.
_HABITS: list[tuple[str, Callable[[_Probe], bool]]] = [
    ("lftp", _lftp),
    ("ncftp", _ncftp),
    ("FileZilla", _filezilla),
    ("WinSCP", _winscp),
    ("FluentFTP", _fluentftp),
    ("Windows ftp.exe", _windows_ftp_exe),
    (".NET FtpWebRequest", _dotnet),
    ("Java URL", _jdk),
    ("curl", _curl),
    ("BSD/GNU ftp", _bsd_ftp),
    ("Java Commons Net", _commons_net),
    ("Python ftplib", _python_ftplib),
]


def from_clnt(clnt: str) -> str:
    """The client named in a CLNT or CSID text: "lftp 4.9.2", "ncftp 3.2.6", or the text."""
    # CSID: "Name=Serv-U FTP Client; Version=15.1;"
    fields = dict(part.strip().split("=", 1) for part in clnt.split(";") if "=" in part)
    if "Name" in fields:
        name = _CSID_JUNK.sub("", fields["Name"]).strip()[:MAX_NAME] or "unknown"
        version = _VERSION.search(fields.get("Version", ""))
        return f"{name} {version.group()}" if version else name
    word = _WORD.search(clnt)
    if word is None:
        return "unknown"
    name = _PRODUCTS.get(word.group().lower(), word.group()[:MAX_NAME])
    version = _VERSION.search(clnt, word.start())
    return f"{name} {version.group()[:20]}" if version else name


def identify(lines: Lines, clnt: str = "") -> str:
    """The client software of a session: from CLNT/CSID if it sent one, else its habits."""
    if clnt:
        return from_clnt(clnt)
    split = next((i for i, (verb, _) in enumerate(lines) if verb == "PASS"), None)
    if split is None:
        return "unknown"
    probe = _Probe(list(lines[:split]), list(lines[split + 1 :]))
    return next((name for name, habit in _HABITS if habit(probe)), "unknown")
