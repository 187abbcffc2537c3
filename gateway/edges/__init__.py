"""The edges: the process and its wiring. The gateway's listeners and login policy, worker
processes, the command line, the HTTP listener serving metrics, probes and ``/admin/``, logins
on the backends, external authentication, sync runs, connectivity checks, malloc tuning.

The only package that may import everything; nothing outside it imports it (``gateway/__main__``
aside; tests/unit/test_layering.py).
"""
