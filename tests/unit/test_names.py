"""gateway.core.names: which bytes a name is on the FTP wire, per route and client."""

from __future__ import annotations

import pytest

from gateway.core import names


def test_without_a_name_encoding_names_are_bytes_whatever_the_client_announced():
    for utf8 in (False, True):
        encoding, errors = names.wire(None, utf8)
        assert b"caf\xe9-\xc3\xa9".decode(encoding, errors).encode(encoding, errors) == b"caf\xe9-\xc3\xa9"


def test_a_cp1252_route_reads_and_writes_cp1252_and_marks_what_it_cannot_write():
    encoding, errors = names.wire("cp1252", utf8=False)
    assert b"caf\xe9 \x80".decode(encoding, errors) == "café €"
    assert "café 日本".encode(encoding, errors) == b"caf\xe9 ??"
    assert "raw-\udc81".encode(encoding, errors) == b"raw-\x81"  # a backend byte that is not UTF-8


def test_a_client_that_announced_utf8_gets_utf8_and_its_stray_cp1252_bytes_are_read():
    encoding, errors = names.wire("cp1252", utf8=True)
    assert b"caf\xc3\xa9 na\xefve \x80".decode(encoding, errors) == "café naïve €"
    assert "café 日本 \udc81".encode(encoding, errors) == "café 日本 ".encode() + b"\x81"
    assert names.wire("windows-1252", utf8=True) == (encoding, errors)  # one handler per codec


@pytest.mark.parametrize("name", ["cp1252", "latin-1", "iso8859-15"])
def test_ascii_compatible_codecs_are_accepted(name):
    assert names.encoding_problem(name) is None


@pytest.mark.parametrize(("name", "why"), [("klingon", "unknown encoding"), ("utf-16", "ASCII")])
def test_other_codecs_are_refused_with_the_reason(name, why):
    assert why in (names.encoding_problem(name) or "")


def test_recode_gives_the_name_the_legacy_bytes_mean():
    assert names.recode("caf\udce9.txt", "cp1252") == "café.txt"
    assert names.recode("caf\udce9.txt", None) == "caf\udce9.txt"
