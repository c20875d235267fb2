"""bench.trim_costs measures every piece on this tree (tiny sizes: a smoke check)."""

from __future__ import annotations

import logging

from bench import trim_costs


def test_every_piece_is_measured() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    flags = (logging._srcfile, logging.logThreads, logging.logProcesses,
             logging.logMultiprocessing)
    try:
        figures = trim_costs.measure(50)
    finally:  # the log line's measurement configures the process's logging
        root.handlers[:] = handlers
        root.setLevel(level)
        (logging._srcfile, logging.logThreads, logging.logProcesses,
         logging.logMultiprocessing) = flags
    assert set(figures) == {"address_new_us", "address_again_us", "reset_data_us",
                            "order_data_5_items_us", "quoteaddr_sender_us", "quoteaddr_new_us",
                            "log_queued_info_us", "worker_signals_per_message_us"}
    assert all(value >= 0 for value in figures.values()), figures
    # The slower pieces cannot round to nothing (the cached ones can, at 0.1 µs).
    assert figures["address_new_us"] > 0 and figures["order_data_5_items_us"] > 0, figures
    assert figures["worker_signals_per_message_us"] > 0, figures
