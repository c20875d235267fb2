"""The benchmark: ``make bench`` (``python -m bench``) and its smoke mode (``--smoke``).

Everything runs co-located on one machine: a private redis-server, an SMTP sink (Postfix's
``smtp-sink`` for throughput, :mod:`bench.sink` where per-message arrival times are needed), the
real ingress and worker processes, a load generator, the baseline design and a delay proxy.
"""
