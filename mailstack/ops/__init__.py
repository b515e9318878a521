"""Operations: the health checks behind ``mailstack status`` and the scrape-time gauges of
``GET /metrics``.

Above the queue and the directory (it reads both), below the services and the CLI that use
it (``tests/test_imports.py``). The counters themselves live in ``mailstack.metrics``,
lowest of all, because every layer bumps them.
"""
