"""What the gateway does for a migration, on the core alone: the login guard, the shadow
phase, sync, the usage record with its readiness report, and the Prometheus metrics both
adapters feed.

May import the core and ``gateway.config``; never the adapters (``gateway.ftp``,
``gateway.backends``) or the edges (tests/unit/test_layering.py).
"""
