"""Benchmarks of oada-jobs against the original TypeScript ``@oada/jobs`` 1.0.4.

``python -m bench`` (``make bench``) runs every benchmark against one embedded
OADA server in TLS mode and writes ``docs/benchmarks.md`` and
``docs/benchmarks.png``; ``python -m bench --quick`` is a short smoke run.
``python -m bench.server_memory`` measures the server core's memory as jobs pile up.
"""
