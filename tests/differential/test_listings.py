"""Listings as legacy clients expect them, compared line by line with vsftpd.

NLST of a directory names its files as the client named the directory (``sub/x.csv``), so
``mget sub`` and ``for n in ftp.nlst("sub"): ftp.retrbinary("RETR " + n, ...)`` work; names
starting with "." are listed only with ``-a`` (or a pattern that starts with "."), so a
pick-up-and-delete job leaves ``.keep`` alone; ``NLST -l`` is the long form; a listing of
nothing is empty, not an error; file types show their ``ls`` letter; a date in the future
shows its year; owners are numbers, as vsftpd shows them.
"""

from __future__ import annotations

import ftplib
import os
import shutil
import subprocess
import time

import pytest

from tests.differential.conftest import Server, compare

COMMANDS = [
    "NLST", "NLST sub", "NLST sub/", "NLST /sub", "NLST ./sub", "NLST sub/*.csv", "NLST *.csv",
    "NLST -a", "NLST -a sub", "NLST .keep", "NLST a.csv", "NLST sub/x.csv", "NLST *", "NLST .*",
    "NLST s*", "NLST /", "NLST  sp ", "NLST nonexist", "NLST nonexist/*", "NLST -1",
    "NLST -l", "NLST -al", "LIST", "LIST -a", "LIST -la", "LIST sub", "LIST -a sub", "LIST *",
    "LIST a.csv", "LIST sub/x.csv", "LIST sub/*.csv", "LIST .keep", "LIST  sp ", "LIST fifo",
    "LIST future.txt", "LIST nonexist",
]  # fmt: skip


def seed_tree(user) -> None:
    home = user.home
    (home / "sub").mkdir()
    (home / "sub" / "x.csv").write_text("x")
    (home / "sub" / ".hidden").write_text("h")
    (home / "a.csv").write_text("a")
    (home / " sp ").write_text("s")
    (home / ".keep").write_text("k")
    (home / ".config").mkdir()
    (home / "future.txt").write_text("f")
    os.mkfifo(home / "fifo")
    two_days = time.time() + 2 * 86400
    os.utime(home / "future.txt", (two_days, two_days))
    for path in home.rglob("*"):
        shutil.chown(path, user.name, user.name)


def fields(line: str) -> tuple[str, ...]:
    """A LIST line as what a parser reads: type+mode, links, owner, group, size, date, name.

    The link count of "." and ".." is left out: SFTP's stat has none (the gateway shows 1).
    """
    mode, links, owner, group, size, month, day, clock_or_year, name = line.split(None, 8)
    return (
        mode,
        "-" if name in (".", "..") else links,
        owner,
        group,
        size,
        month,
        str(int(day)),
        clock_or_year,
        name,
    )


def long_form(command: str) -> bool:
    """True if the command lists ``ls -l`` lines (LIST, NLST -l)."""
    verb, _, rest = command.partition(" ")
    return verb == "LIST" or (rest.startswith("-") and "l" in rest.split()[0])


def listings(server: Server, user) -> dict[str, object]:
    ftp = server.login(user)
    out: dict[str, object] = {}
    for command in COMMANDS:
        lines: list[str] = []
        try:
            ftp.retrlines(command, lines.append)
        except ftplib.Error as err:
            out[command] = str(err)[:3]
            continue
        out[command] = [fields(line) for line in lines] if long_form(command) else lines
    ftp.quit()
    return out


def test_listings_line_by_line_as_on_vsftpd(servers, user):
    outcomes = compare(servers, user, lambda: seed_tree(user), lambda server: listings(server, user))
    gateway, vsftpd = outcomes["gateway"], outcomes["vsftpd"]
    assert gateway["NLST sub"] == ["sub/x.csv"]
    assert gateway["NLST"] == [" sp ", "a.csv", "fifo", "future.txt", "sub"]
    assert gateway["NLST nonexist"] == []
    assert [f[0][0] for f in gateway["LIST fifo"]] == ["p"]
    assert gateway["LIST future.txt"][0][7].isdigit()  # the year, not a time
    differing = {c: (gateway[c], vsftpd[c]) for c in COMMANDS if gateway[c] != vsftpd[c]}
    assert differing == {}


@pytest.mark.parametrize("client", ["inetutils ftp"])
def test_a_pick_up_and_delete_job_leaves_dotfiles_alone_as_on_vsftpd(servers, user, tmp_path, client):
    script = "prompt\nbinary\nmget *\nmdelete *\nbye\n"

    def job(server: Server) -> tuple[list[str], list[str]]:
        work = tmp_path / server.name
        work.mkdir()
        subprocess.run(
            ["ftp", "-n", "-p", server.host, str(server.port)],
            input=f"user {user.name} {user.password}\n{script}", text=True, cwd=work, capture_output=True,
            timeout=60,
        )  # fmt: skip
        return sorted(os.listdir(work)), sorted(os.listdir(user.home))

    outcomes = compare(servers, user, lambda: seed_tree(user), job)
    fetched, left = outcomes["gateway"]
    assert ".keep" not in fetched and {".keep", ".config", "sub"} <= set(left)
    assert outcomes["gateway"] == outcomes["vsftpd"]


def test_ftplib_fetches_every_file_nlst_names_in_a_subdirectory(servers, user):
    def fetch(server: Server) -> dict[str, bytes]:
        ftp = server.login(user)
        got = {}
        for name in ftp.nlst("sub"):
            chunks: list[bytes] = []
            ftp.retrbinary("RETR " + name, chunks.append)
            got[name] = b"".join(chunks)
        ftp.quit()
        return got

    outcomes = compare(servers, user, lambda: seed_tree(user), fetch)
    assert outcomes["gateway"] == outcomes["vsftpd"] == {"sub/x.csv": b"x"}


def test_dotfiles_shown_when_the_config_says_so(gateway_factory, sshd, user):
    from tests.helpers.gateway_env import base_config

    seed_tree(user)
    gw = gateway_factory(base_config(sshd, listing={"dotfiles": "shown"}))
    ftp = gw.login(user)
    assert ftp.nlst() == [" sp ", ".config", ".keep", "a.csv", "fifo", "future.txt", "sub"]
    ftp.quit()
