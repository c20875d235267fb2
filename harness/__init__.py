"""Real parts for the tests and the benchmark: free ports, waiting, process groups, a private
redis-server (or a primary, a replica and three sentinels), a recording SMTP server and the
environment of a service process.

Both ``tests/`` (through ``tests/support.py``) and ``bench/`` import this package; it imports
neither of them, nor the service (import-linter checks it).
"""
