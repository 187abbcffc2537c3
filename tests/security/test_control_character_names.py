"""Attack: hide files from everyone else with control characters in their names.

Listings leave out names with control characters (they could forge reply or listing lines),
so a user who could create ``report\\x1b[8m.csv`` had a file nobody else would see. Such
names are now refused when created: STOR, APPE, STOU, MKD and RNTO answer 553.
"""

from __future__ import annotations

import ftplib
import io

import pytest

from tests.helpers.gateway_env import seed


@pytest.mark.parametrize("name", ["tab\there.csv", "esc\x1b[8m.csv", "del\x7f.csv", "bell\x07", "c1\x85next"])
def test_names_with_control_characters_are_refused_at_creation(ftp, user, name):
    seed(user, "plain.csv", "p")
    for action in (
        lambda: ftp.storbinary(f"STOR {name}", io.BytesIO(b"x")),
        lambda: ftp.storbinary(f"APPE {name}", io.BytesIO(b"x")),
        lambda: ftp.sendcmd(f"STOU {name}"),
        lambda: ftp.mkd(name),
        lambda: ftp.mkd(f"sub/{name}"),
        lambda: ftp.rename("plain.csv", name),
    ):
        with pytest.raises(ftplib.error_perm, match=r"^553 File name not allowed"):
            action()
    assert sorted(p.name for p in user.home.iterdir()) == ["plain.csv"]
    assert ftp.nlst() == ["plain.csv"]


def test_ordinary_names_are_still_created(ftp, user):
    for name in ("a b.csv", "été.csv", "x'y\".csv"):
        ftp.storbinary(f"STOR {name}", io.BytesIO(b"x"))
    ftp.mkd("dir with blanks")
    assert sorted(ftp.nlst()) == sorted(["a b.csv", "été.csv", "x'y\".csv", "dir with blanks"])
