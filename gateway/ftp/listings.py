"""LIST, NLST, MLSD, MLST and STAT: listings from the storage's READDIR attributes
(``gateway.core.listing`` makes the lines), or the legacy server's own in the legacy phases.

A mixin of the control channel (``gateway.ftp.handler.GatewayHandler``).
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Iterable, Iterator

from pyftpdlib.handlers import FTPHandler

from gateway.core import listing
from gateway.core.errors import NotFound
from gateway.core.storage import Entry, Kind, Passthrough
from gateway.ftp import policy
from gateway.ftp.filesystem import GatewayFS


class _LineProducer:
    """pyftpdlib producer joining encoded lines into ~64 KiB chunks (b"" when done)."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines

    def more(self) -> bytes:
        chunk = bytearray()
        for line in self._lines:
            chunk += line
            if len(chunk) >= 65536:
                break
        return bytes(chunk)


class ListingCommands(FTPHandler):  # type: ignore[misc]
    """The listing commands of the control channel."""

    fs: GatewayFS

    # --- listings (READDIR attrs, sanitised names; see gateway.core.listing)

    def _entries(
        self, path: str, glob: bool = False, everything: bool = False
    ) -> tuple[bool, Iterator[Entry], str]:
        """(is_directory, entries, their directory as the client named it) for a directory, a
        file or (``glob``) a pattern.

        As vsftpd and ``ls``: names starting with "." are left out unless asked for (``-a``,
        ``everything``, a pattern starting with ".", or ``listing.dotfiles: shown``); ``-a``
        adds "." and "..". A pick-up-and-delete job (``mget *; mdelete *``) must not take
        ``.keep`` or ``.config`` along.
        """
        dotfiles = everything or "a" in self._ls_flags or self.show_dotfiles
        arg = self._listing_arg
        try:
            if self.fs.attrs(path).kind is Kind.DIR:
                entries: Iterable[Entry] = self.storage.list_dir(path)
                if not dotfiles:
                    entries = (e for e in entries if not e.name.startswith("."))
                if everything or "a" in self._ls_flags:
                    entries = itertools.chain(self._dot_entries(path), entries)
                return True, listing.sorted_if_small(entries), arg
            return (
                False,
                iter([Entry(posixpath.basename(path), self.fs.attrs(path, follow=False))]),
                posixpath.dirname(arg),
            )
        except NotFound:
            pattern = posixpath.basename(path)
            if not (glob and listing.has_glob(pattern)):
                raise
        matches = listing.glob_filter(self.storage.list_dir(posixpath.dirname(path)), pattern, dotfiles)
        # Matches are named as the client wrote the pattern's directory (``mget sub/*.csv``
        # then RETRs ``sub/a.csv``); that text passed paths.check_argument already.
        return False, listing.sorted_if_small(matches), posixpath.dirname(arg)

    def _dot_entries(self, path: str) -> list[Entry]:
        """The "." and ".." entries of directory ``path`` (".." of the root is the root)."""
        parent = posixpath.dirname(path) if self.fs.validpath(posixpath.dirname(path)) else path
        return [Entry(".", self.fs.attrs(path)), Entry("..", self.fs.attrs(parent))]

    def _listing_or_nothing(self, path: str) -> tuple[Iterator[Entry], str]:
        """Entries and directory for LIST/NLST; none for a path or pattern that matches nothing.

        vsftpd answers such a listing with 226 and no lines, and scripts rely on it (ftplib's
        ``nlst("*.csv")`` returns an empty list when no file waits): not 550.
        """
        try:
            _, entries, directory = self._entries(path, glob=True)
        except NotFound:
            return iter(()), ""
        return entries, directory

    def _push_lines(self, lines: Iterable[str], cmd: str) -> None:
        encoded = (f"{line}\r\n".encode(self.encoding, self.unicode_errors) for line in lines)
        self.push_dtp_data(_LineProducer(encoded), isproducer=True, cmd=cmd)

    # --- the legacy phases: the legacy server's own listings and SITE commands

    def _passthrough(self) -> Passthrough | None:
        """The legacy FTP session that serves this login (phases legacy, shadow), if any."""
        login = self.authorizer.login
        return login.storage if login is not None and isinstance(login.storage, Passthrough) else None

    def _relay_listing(self, verb: str) -> bool:
        """LIST/NLST in a legacy phase: the legacy server's lines as they are (True if relayed).

        Its format, owners, dotfile rules and NLST prefixes are what the user's scripts were
        written against. The client's options and path go as written (absolute paths mapped
        under the route's root), run in the client's directory there.
        """
        relay = self._passthrough()
        if relay is None:
            return False
        path = self._listing_arg
        where = self.fs.ftp2fs(path) if path.startswith("/") else path
        command = " ".join(word for word in (verb, self._ls_options, where) if word)
        lines = relay.raw_listing(command, self.fs.ftp2fs(self.fs.cwd))
        self._push_lines((line for line in lines if listing.is_name_text(line)), verb)
        return True

    def _relay_site(self, arg: str) -> bool:
        """SITE in a legacy phase: the legacy server answers (True if relayed).

        SITE CHMOD and UTIME stay the gateway's (route permissions, the shadow phase's replay);
        any other subcommand (``SITE RECFM=FB``, ``SITE UMASK``, ``SITE HELP``) is the legacy
        server's to answer. A read-only route refuses them: what they change is not known here.
        """
        relay = self._passthrough() if self.authenticated and arg else None
        sub = arg.split(" ", 1)[0].upper()
        if relay is None or sub in ("CHMOD", "UTIME"):
            return False
        login = self.authorizer.login
        if login is not None and login.read_only:
            self.respond(f"550 SITE {sub} is not allowed for this account.")
            self.log_cmd("SITE", arg, 550, "read-only route")
            return True
        code, lines = relay.site(arg)
        self.push("".join(f"{listing.wire_text(line)}\r\n" for line in lines[:-1]))
        self.respond(lines[-1])
        self.log_cmd("SITE", arg, code, lines[-1][4:])
        return True

    def ftp_LIST(self, path: str) -> str:
        """LIST: ``ls -l`` lines (bare names) for a directory, a single file or a wildcard pattern."""
        if self._relay_listing("LIST"):
            return path
        entries, _ = self._listing_or_nothing(path)
        self._push_lines(listing.list_lines(entries), "LIST")
        return path

    def ftp_NLST(self, path: str) -> str:
        """NLST: names usable as they are with RETR (``NLST sub`` gives ``sub/x.csv``); ``-l``: LIST lines."""
        if self._relay_listing("NLST"):
            return path
        entries, directory = self._listing_or_nothing(path)
        if "l" in self._ls_flags:
            self._push_lines(listing.list_lines(entries), "NLST")
        else:
            self._push_lines(listing.nlst_names(entries, policy.nlst_prefix(directory)), "NLST")
        return path

    def ftp_MLSD(self, path: str) -> str | None:
        """MLSD: RFC 3659 facts for each entry of a directory (501 for a non-directory)."""
        is_dir, entries, _ = self._entries(path)
        if not is_dir:
            self.respond("501 Not a directory.")
            return None
        perms = self.authorizer.get_perms(self.username)
        self._push_lines(listing.mlsd_lines(entries, perms, self._current_facts), "MLSD")
        return path

    def ftp_MLST(self, path: str) -> str:
        """MLST: facts of one path on the control channel."""
        virtual = self.fs.fs2ftp(path)
        entry = Entry(posixpath.basename(path), self.fs.attrs(path))
        facts = listing.mlsx_facts(entry, self.authorizer.get_perms(self.username), self._current_facts)
        self.push(f'250-Listing "{virtual}":\r\n {facts} {virtual}\r\n')
        self.respond("250 End MLST.")
        return path

    def ftp_STAT(self, path: str) -> str | None:
        """STAT: server status without argument, else a listing on the control channel (capped)."""
        if not path:
            return super().ftp_STAT(path)  # type: ignore[no-any-return]
        _, entries, _ = self._entries(path, everything=True)  # as vsftpd; no wildcards (pyftpdlib)
        lines = list(itertools.islice(listing.list_lines(entries), policy.STAT_MAX_LINES + 1))
        self.push(f'213-Status of "{self.fs.fs2ftp(path)}":\r\n')
        self.push("".join(f" {line}\r\n" for line in lines[: policy.STAT_MAX_LINES]))
        if len(lines) > policy.STAT_MAX_LINES:
            self.push(f" (only the first {policy.STAT_MAX_LINES} entries; use LIST for the rest)\r\n")
        self.respond("213 End of status.")
        return path
