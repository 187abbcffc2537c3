"""File mode arithmetic for SITE CHMOD and SITE UMASK: octal and chmod(1) symbolic modes.

Pure core. ProFTPD takes symbolic modes in SITE CHMOD (``u+x``, ``go-w``, ``a=rX``) as
chmod(1) does; scripts written for it send them. vsftpd reads them as octal and sets 0.
"""

from __future__ import annotations

import re

_OCTAL = re.compile(r"[0-7]{1,4}")
_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")
#: The bits each class owns: its rwx, and the special bit that goes with it.
_CLASS_BITS = {"u": 0o4700, "g": 0o2070, "o": 0o1007}
_SHIFT = {"u": 6, "g": 3, "o": 0}


def parse_octal(text: str, limit: int = 0o7777) -> int:
    """The value of an octal mode such as ``755`` or ``0027``; ValueError if it is not one."""
    if not _OCTAL.fullmatch(text) or int(text, 8) > limit:
        raise ValueError(f"not an octal mode up to {limit:o}: {text!r}")
    return int(text, 8)


def apply(text: str, current: int, is_dir: bool = False) -> int:
    """The permission bits ``chmod TEXT`` gives a file whose bits are ``current``.

    TEXT is octal or symbolic: comma-separated clauses of who (``ugoa``, none: all) and
    actions (``+``, ``-``, ``=`` with ``rwxXst`` or a class to copy). ValueError otherwise.
    """
    if _OCTAL.fullmatch(text):
        return parse_octal(text)
    mode = current & 0o7777
    for clause in text.split(","):
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            raise ValueError(f"not a mode: {text!r}")
        classes = match.group(1).replace("a", "ugo") or "ugo"
        for op, perms in _ACTION.findall(match.group(2)):
            bits = _bits(perms, classes, mode, is_dir)
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                cleared = sum(_CLASS_BITS[c] for c in set(classes))
                if is_dir:  # chmod(1) leaves a directory's setuid/setgid bits to "=" with s only
                    cleared &= ~0o6000
                mode = (mode & ~cleared) | bits
    return mode


def _bits(perms: str, classes: str, mode: int, is_dir: bool) -> int:
    """The mode bits that ``perms`` stands for in ``classes``."""
    if perms in _SHIFT:  # copy another class's rwx (read before this action)
        rwx = (mode >> _SHIFT[perms]) & 0o7
        return sum(rwx << _SHIFT[c] for c in set(classes))
    rwx = 0
    rwx |= 0o4 if "r" in perms else 0
    rwx |= 0o2 if "w" in perms else 0
    any_x = bool(mode & 0o111) or is_dir
    rwx |= 0o1 if "x" in perms or ("X" in perms and any_x) else 0
    bits = sum(rwx << _SHIFT[c] for c in set(classes))
    if "s" in perms:
        bits |= (0o4000 if "u" in classes else 0) | (0o2000 if "g" in classes else 0)
    if "t" in perms and "o" in classes:
        bits |= 0o1000
    return bits
