"""collective_keys: a second MirroredStrategy in one process reuses collective keys (TensorFlow).

Every MirroredStrategy numbers its collectives from the same start, and the runtime
caches a collective's shape by its keys, so a second strategy in one process (a notebook,
a test suite, a train-then-evaluate script) fails with "Shape mismatch in the collective
instance". TensorFlow's own tests bump this base for the same reason
(tensorflow/python/distribute/strategy_combinations.py). Not a Keras patch: called by
`create_strategy` before each MirroredStrategy. Test:
tests/test_strategy.py::test_a_second_mirrored_strategy_does_not_reuse_collective_keys.
"""

from __future__ import annotations

from tfdp import _compat


def use_fresh_collective_keys() -> None:
    """Gives the next MirroredStrategy collective keys no earlier one used."""
    _compat.bump_mirrored_collective_keys(100_000)
