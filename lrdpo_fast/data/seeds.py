"""The one seed formula of the project: a run seed and a stream number -> the seed of that stream.

Every seeded draw of a run (the prompts of iteration i, its samples, its pair choice, the
epoch order of training, the held-out evaluation) takes ``stream_seed(seed, stream)``, so two
streams never share a random sequence and the same run seed redraws the same run.
"""

from __future__ import annotations

SEED_STRIDE = 1_000_003  # prime, larger than any stream number used below
EVAL_STREAM = 999_983  # the held-out evaluation's stream (iterations and epochs stay far below it)


def stream_seed(seed: int, stream: int) -> int:
    """The seed of ``stream`` (an iteration, an epoch, ``EVAL_STREAM``) of a run seeded ``seed``:
    ``seed * 1_000_003 + stream`` (ints >= 0; the value every seeded draw has always used)."""
    return seed * SEED_STRIDE + stream
