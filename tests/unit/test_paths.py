import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import paths
from gateway.core.errors import BadArgument

segment = st.sampled_from(["..", ".", "", "a", "b c", "ü", "...", "x..y"])
raw_path = st.lists(segment, max_size=12).map("/".join)
absolute = st.lists(st.sampled_from(["a", "b", "ü", "x y"]), max_size=5).map(lambda p: "/" + "/".join(p))


@pytest.mark.parametrize(
    ("cwd", "arg", "expected"),
    [
        ("/", "a", "/a"),
        ("/a", "b", "/a/b"),
        ("/a", "../b", "/b"),
        ("/a", "/b/./c/", "/b/c"),
        ("/", "../../..", "/"),
        ("/a/b", "..", "/a"),
        ("/", "//etc//passwd", "/etc/passwd"),
        ("/a", "", "/a"),
        ("/", "..\\..\\etc", "/..\\..\\etc"),  # backslash is an ordinary character on POSIX
    ],
)
def test_resolve_examples(cwd, arg, expected):
    assert paths.resolve(cwd, arg) == expected


@pytest.mark.parametrize("bad", ["a\r\nDELE b", "x\n421 injected", "nul\0byte", "cr\r"])
def test_control_characters_are_refused(bad):
    with pytest.raises(BadArgument) as exc:
        paths.resolve("/", bad)
    assert exc.value.code == 501


@given(cwd=absolute, arg=raw_path)
def test_resolved_paths_never_climb_out(cwd, arg):
    resolved = paths.resolve(cwd, arg)
    assert resolved.startswith("/")
    assert ".." not in resolved.split("/")
    assert "//" not in resolved
    backend = paths.to_backend("/srv/home/u", resolved)
    assert backend == "/srv/home/u" or backend.startswith("/srv/home/u/")
    assert paths.to_virtual("/srv/home/u", backend) == resolved


@given(cwd=absolute, arg=raw_path)
def test_resolve_is_idempotent(cwd, arg):
    once = paths.resolve(cwd, arg)
    assert paths.resolve("/", once) == once
    assert paths.resolve(cwd, once) == once


def test_root_slash_maps_identically():
    assert paths.to_backend("/", "/a/b") == "/a/b"
    assert paths.to_virtual("/", "/a/b") == "/a/b"


def test_to_virtual_rejects_siblings_of_root():
    assert paths.to_virtual("/home/u", "/home/u2/x") is None
    assert paths.to_virtual("/home/u", "/home") is None
