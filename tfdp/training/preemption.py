"""Preemption: SIGTERM during Trainer.fit ends it at a step every worker agrees on, after a save.

A scheduler (SLURM, Kubernetes, a cloud's spot reclaim, tfdp-launch passing on its own
SIGTERM) sends SIGTERM before it kills. While fit runs with a model_dir, tfdp notes the
signal instead of dying; after each chunk of steps the workers all-reduce whether any of
them got it (one scalar collective per chunk, on several workers only), so all stop after
the same step, save the checkpoint with the data position, and exit with
PREEMPTED_EXIT_CODE. The next run resumes from that save, step-exact.
"""

from __future__ import annotations

import signal
import threading

import tensorflow as tf

from tfdp import roles

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later


class Preempted(SystemExit):
    """Raised by Trainer.fit after the preemption save; exits with PREEMPTED_EXIT_CODE unless caught."""

    def __init__(self, message: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionWatch:
    """Notes SIGTERM while active (a context manager) and tells when all workers should stop."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy, self.signalled, self._previous = strategy, False, None
        self._several_workers = roles.num_workers(strategy) > 1
        if self._several_workers:
            def any_signalled(flag):
                return tf.distribute.get_replica_context().all_reduce("SUM", tf.identity(flag))

            self._all_reduce = tf.function(lambda flag: strategy.run(any_signalled, args=(flag,)))

    def _note(self, signum, frame) -> None:
        self.signalled = True

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def should_stop(self) -> bool:
        """Whether any worker got SIGTERM (the same answer on every worker; a collective on several)."""
        if not self._several_workers:
            return self.signalled
        total = self._all_reduce(tf.constant(1.0 if self.signalled else 0.0))
        return float(self.strategy.experimental_local_results(total)[0]) > 0
