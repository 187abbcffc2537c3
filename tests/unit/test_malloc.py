"""glibc malloc tuning (gateway.edges.malloc): applied on glibc, harmless elsewhere."""

import platform

import pytest

from gateway.edges import malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


def test_the_trimmer_runs_in_a_daemon_thread_of_its_own():
    thread = malloc.trim_periodically(interval=0.01)
    assert thread is not None and thread.daemon and thread.name == "malloc-trim"
    thread.join(0.1)
    assert thread.is_alive()  # trimming did not raise


def test_limit_arenas_leaves_an_operator_setting_alone(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))

    monkeypatch.setattr(malloc, "_libc", FakeLibc)
    malloc.limit_arenas(2)
    assert calls == [(-8, 2)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    malloc.limit_arenas(2)
    assert calls == [(-8, 2)]
