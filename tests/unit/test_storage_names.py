"""Hidden names of uploads in progress and kept partials (gateway.core.storage)."""

from __future__ import annotations

from gateway.core.storage import is_upload_in_progress, partial_name


def test_a_partial_is_per_login_and_next_to_its_target():
    ann, bob = partial_name("/in/a.csv", "ann"), partial_name("/in/a.csv", "bob")
    assert ann is not None and bob is not None and ann != bob
    assert ann.startswith("/in/.ftpgw-partial-") and ann.endswith("-a.csv")
    assert partial_name("/in/a.csv", "ann") == ann  # stable across sessions and processes
    assert is_upload_in_progress(ann.rsplit("/", 1)[1])


def test_a_name_too_long_for_a_partial_gets_none_rather_than_a_shared_cut_name():
    fits, too_long = "n" * 231, "n" * 232
    assert partial_name(f"/d/{fits}", "ann") is not None
    assert partial_name(f"/d/{too_long}", "ann") is None
    assert partial_name("/d/" + "é" * 116, "ann") is None  # bytes count, not characters


def test_listings_hide_only_the_gateways_own_names():
    assert is_upload_in_progress(".ftpgw-upload-0123abcd-x")
    assert is_upload_in_progress(".ftpgw-partial-0123abcd-x")
    assert not is_upload_in_progress(".ftpgw-partial-x")
    assert not is_upload_in_progress("ftpgw-partial-0123abcd-x")
