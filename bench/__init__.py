"""lrdpo-fast benchmark suite: `python -m bench` (see bench/__main__.py) or `pytest bench/ --benchmark-only`.

Every comparison runs each contender on the same seeded inputs, one fresh worker process per
(contender, size) cell (bench/harness.py runs bench/worker.py), so peak-memory numbers are not polluted by another
library's allocator caches or compile-time state. Results go to bench/results/<device>/.
"""
