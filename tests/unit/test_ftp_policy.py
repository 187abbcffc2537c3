"""The FTP side's command rules (gateway.ftp.policy): pure, so checked by properties."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from gateway.ftp import policy

words = st.lists(st.text(alphabet="alR1t", min_size=1, max_size=3), max_size=3)
paths = st.text(alphabet=string.ascii_letters + "/._ -", max_size=20).filter(lambda p: not p.startswith("-"))


@given(words, paths)
def test_ls_options_split_leading_option_words_from_the_path_as_sent(options, path):
    arg = " ".join([*(f"-{w}" for w in options), *([path] if path else [])])
    letters, rest = policy.ls_options(arg)
    assert letters == set("".join(options))
    assert rest == (path if path.strip() else "")  # blanks at the ends may belong to a name


def test_stat_with_a_path_needs_the_list_permission():
    assert policy.governing_verb("STAT", "-la /x") == "LIST"
    assert policy.governing_verb("STAT", "") == "STAT"  # the server's status: always allowed
    assert policy.governing_verb("RETR", "x") == "RETR"
    assert {"USER", "PASS", "QUIT", "AUTH"} <= policy.ALWAYS_ALLOWED
    assert not {"RETR", "STOR", "DELE", "SITE"} & policy.ALWAYS_ALLOWED


def test_telnet_commands_before_a_verb_are_recognised():
    assert policy.TELNET_COMMANDS.sub(b"", b"\xff\xf4\xff\xf2ABOR\r\n") == b"ABOR\r\n"  # IAC IP, IAC DM
    assert policy.TELNET_COMMANDS.sub(b"", b"\xff\xfb\x01NOOP\r\n") == b"NOOP\r\n"  # IAC WILL ECHO
    assert policy.TELNET_COMMANDS.sub(b"", b"RETR \xff.txt\r\n") == b"RETR \xff.txt\r\n"  # a name byte
