"""SITE UMASK/CHMOD/UTIME (as vsftpd and ProFTPD have them), time setting (MFMT, MDTM with
a time), and the checksum commands (HASH, XSHA256, ...: replies as ProFTPD's mod_digest).

A mixin of the control channel (``gateway.ftp.handler.GatewayHandler``).
"""

from __future__ import annotations

import calendar
import time

from pyftpdlib.handlers import FTPHandler

from gateway.core import checksums, modes, names
from gateway.core.errors import GatewayError
from gateway.ftp import policy
from gateway.ftp.filesystem import GatewayFS


class SiteAndChecksumCommands(FTPHandler):  # type: ignore[misc]
    """SITE, time setting and checksum commands of the control channel."""

    fs: GatewayFS
    checksum_limits: checksums.Limits

    # --- vsftpd's and ProFTPD's SITE commands and time setting

    def ftp_SITE_UMASK(self, line: str) -> None:
        """SITE UMASK [mask]: the bits later uploads and MKDs of this session leave out (vsftpd)."""
        if not line:
            self.respond(f"200 Your current UMASK is 0{self.fs.umask or 0:o}.")
            return
        try:
            self.fs.umask = modes.parse_octal(line.strip(), 0o777)
        except ValueError:
            self.respond("501 SITE UMASK needs an octal mask such as 022.")
            return
        self.respond(f"200 UMASK set to 0{self.fs.umask:o}.")

    def ftp_SITE_CHMOD(self, path: str, mode: str) -> tuple[str, int] | None:
        """SITE CHMOD octal or symbolic (``u+x``, ``go-w``, as ProFTPD and chmod(1))."""
        try:
            bits = modes.apply(mode, self.fs.attrs(path).mode, self.fs.isdir(path))
        except ValueError:
            self.respond("501 SITE CHMOD needs an octal (755) or symbolic (u+x) mode.")
            return None
        self.fs.chmod(path, bits)
        self.respond("200 SITE CHMOD command successful.")
        return path, bits

    def ftp_SITE_UTIME(self, line: str) -> str | None:
        """SITE UTIME as ProFTPD takes it: ``TIME PATH``, or ``PATH ATIME MTIME CTIME UTC`` (sets MTIME)."""
        words = line.split(" ")
        five = len(words) >= 5 and words[-1].upper() == "UTC"
        if five and all(policy.TIMESTAMP.fullmatch(w) for w in words[-4:-1]):
            stamp, name = words[-3], " ".join(words[:-4])
        elif len(words) >= 2 and policy.TIMESTAMP.fullmatch(words[0]):
            stamp, name = words[0], " ".join(words[1:])
        else:
            self.respond("501 Syntax: SITE UTIME YYYYMMDDhhmm[ss] path (or path atime mtime ctime UTC).")
            return None
        path = self.fs.ftp2fs(name)
        if not self.authorizer.has_perm(self.username, "T", path):
            self.respond("550 Not enough privileges.")
            return None
        when = calendar.timegm(time.strptime(stamp.ljust(14, "0"), "%Y%m%d%H%M%S"))
        self.fs.utime(path, when)
        self.respond("200 SITE UTIME command successful.")
        return path

    # --- checksums (gateway.core.checksums): replies as ProFTPD's mod_digest gives them

    def _hash_feature(self) -> str:
        """FEAT's HASH line, the selected algorithm starred."""
        return "HASH " + ";".join(a + ("*" if a == self._hash else "") for a in checksums.ALGORITHMS)

    def ftp_OPTS(self, line: str) -> None:
        """OPTS HASH [algorithm] selects (or names) HASH's algorithm; OPTS UTF8 is noted for
        names.wire; other options as pyftpdlib."""
        option, _, value = line.strip().partition(" ")
        if option.upper() in ("UTF8", "UTF-8"):
            self._utf8 = value.strip().upper() != "OFF"
            if self._name_encoding is not None:  # FileZilla announces UTF-8 after logging in
                self.encoding, self.unicode_errors = names.wire(self._name_encoding, self._utf8)
        if option.upper() != "HASH":
            super().ftp_OPTS(line)
            return
        if value:
            chosen = value.strip().upper()
            if chosen not in checksums.ALGORITHMS:
                self.respond(f"501 {value.strip()}: Unsupported algorithm.")
                return
            self._extra_feats.remove(self._hash_feature())
            self._hash = chosen
            self._extra_feats.append(self._hash_feature())
        self.respond(f"200 {self._hash}")

    def ftp_HASH(self, path: str) -> str | None:
        """HASH: the selected algorithm over the whole file (213 ALGO 0-SIZE HEX PATH, the
        path as the client gave it, as ProFTPD)."""
        digest = self._checksum(path, self._hash)
        size = self.fs.attrs(path).size
        self.push(f"213-Computing {self._hash} digest\r\n")
        self.respond(f"213 {self._hash} 0-{size} {digest} {self._arg}")
        return path

    def _x_checksum(self, line: str, algorithm: str) -> str | None:
        """XSHA256/XSHA512/XSHA1/XMD5/XCRC <path> [<start> <end>]: 250 and the digest in upper case."""
        words = line.split(" ")
        start, end = 0, None
        if len(words) >= 3 and words[-1].isdigit() and words[-2].isdigit():
            start, end, words = int(words[-2]), int(words[-1]), words[:-2]
        path = self.fs.ftp2fs(" ".join(words))
        if not self.authorizer.has_perm(self.username, "r", path):
            self.respond("550 Not enough privileges.")
            return None
        digest = self._checksum(path, algorithm, start, end, not_a_file=550)
        self.push(f"250-Computing {algorithm.replace('-', '')} digest\r\n")  # ProFTPD: "SHA256"
        self.respond(f"250 {digest.upper()}")
        return path

    def _checksum(
        self, path: str, algorithm: str, start: int = 0, end: int | None = None, not_a_file: int = 553
    ) -> str:
        result = "ok"
        try:
            return self.checksum_limits.compute(self.storage, path, algorithm, start, end)
        except checksums.NotAFile as err:
            result = "not_a_file"
            raise checksums.NotAFile(code=not_a_file) from err
        except checksums.Busy:
            result = "busy"
            raise
        except checksums.TooBig:
            result = "too_big"
            raise
        except GatewayError:
            result = "failed"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.checksums.labels(algorithm, result).inc()

    def _set_mtime_alias(self, cmd: str, arg: str) -> tuple[str, str]:
        """vsftpd's ``MDTM YYYYMMDDhhmmss path`` sets the time: it is MFMT (and governed as MFMT)."""
        stamp, _, name = arg.partition(" ")
        if cmd == "MDTM" and name and policy.TIMESTAMP.fullmatch(stamp) and len(stamp) == 14:
            return "MFMT", arg
        return cmd, arg
