"""How ``workers: N`` divides the configuration between the worker processes."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import config
from gateway.edges.workers import worker_config


@given(low=st.integers(1024, 60000), size=st.integers(1, 5000), workers=st.integers(1, 64))
def test_passive_slices_are_disjoint_and_cover_the_range(low, size, workers):
    if size < workers:
        return
    high = min(low + size - 1, 65535)
    if high - low + 1 < workers:
        return
    slices = [config.passive_share((low, high), workers, i) for i in range(workers)]
    assert slices[0][0] == low and slices[-1][1] == high
    for (a_low, a_high), (b_low, _) in itertools.pairwise(slices):
        assert a_low <= a_high and a_high + 1 == b_low


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_worker_config_shares_the_totals(workers):
    cfg = config.GatewayConfig(workers=workers)
    parts = [worker_config(cfg, i) for i in range(workers)]
    assert all(p.workers == 1 for p in parts)
    assert sum(p.limits.max_connections for p in parts) >= cfg.limits.max_connections
    assert sum(p.limits.max_connections for p in parts) < cfg.limits.max_connections + workers
    assert sum(p.limits.transfer_buffer_mib for p in parts) < cfg.limits.transfer_buffer_mib + workers
    assert sum(p.guard.max_unauthenticated for p in parts) < cfg.guard.max_unauthenticated + workers
    ports = [p.listen.passive_ports for p in parts]
    assert ports[0][0] == cfg.listen.passive_ports[0] and ports[-1][1] == cfg.listen.passive_ports[1]
