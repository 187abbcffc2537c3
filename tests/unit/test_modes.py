"""SITE CHMOD modes: octal, and symbolic as chmod(1) computes them (checked against GNU chmod)."""

import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import modes

WHO = st.text(alphabet="ugoa", max_size=3)
PERMS = st.one_of(st.text(alphabet="rwxXst", max_size=4), st.sampled_from("ugo"))
ACTION = st.tuples(st.sampled_from("+-="), PERMS).map("".join)
CLAUSE = st.builds(lambda who, actions: who + "".join(actions), WHO, st.lists(ACTION, min_size=1, max_size=2))
SYMBOLIC = st.lists(CLAUSE, min_size=1, max_size=3).map(",".join)


def gnu_chmod(tmp_path, mode_text: str, current: int, is_dir: bool) -> int:
    path = tmp_path / ("d" if is_dir else "f")
    if is_dir:
        path.mkdir(exist_ok=True)
    else:
        path.touch()
    os.chmod(path, current)
    subprocess.run(["chmod", "--", mode_text, str(path)], check=True, preexec_fn=lambda: os.umask(0))
    return path.stat().st_mode & 0o7777


@settings(max_examples=300, deadline=None)
@given(text=SYMBOLIC, current=st.integers(0, 0o7777), is_dir=st.booleans())
def test_symbolic_modes_as_gnu_chmod_computes_them(tmp_path_factory, text, current, is_dir):
    tmp = tmp_path_factory.mktemp("chmod")
    assert modes.apply(text, current, is_dir) == gnu_chmod(tmp, text, current, is_dir)


def test_octal_and_bad_modes():
    assert modes.apply("755", 0o600) == 0o755 and modes.apply("0640", 0) == 0o640
    assert modes.parse_octal("027", 0o777) == 0o027
    for bad in ("u+q", "", "9", "+rw,", "77777", "z=r"):
        with pytest.raises(ValueError):
            modes.apply(bad, 0o644)
    with pytest.raises(ValueError):
        modes.parse_octal("1777", 0o777)
