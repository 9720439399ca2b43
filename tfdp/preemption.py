"""Preemption: SIGTERM during a fit that can save ends it at a step every worker agrees on.

A scheduler (SLURM, Kubernetes, a cloud's spot reclaim, tfdp-launch passing on its own
SIGTERM) sends SIGTERM before it kills. While a fit runs that has somewhere to save
(Trainer.fit with a model_dir, model.fit with a BackupAndRestore callback), tfdp notes
the signal instead of dying; after each chunk of steps the workers all-reduce whether
any of them got it (one scalar collective per chunk, on several workers only), so all
stop after the same step, save with the data position, and exit with
PREEMPTED_EXIT_CODE. The next run resumes from that save, step-exact.

Outside such a fit SIGTERM ends the process, as it does any program: TensorFlow's
coordination service catches SIGTERM on multi-worker tasks (for its own
PreemptionCheckpointHandler, which Keras 3 does not use), which would make every stop
wait for the launcher's SIGKILL; `restore_default_sigterm` undoes that.
"""

from __future__ import annotations

import signal
import threading

import tensorflow as tf

from tfdp import roles

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later


class Preempted(SystemExit):
    """Raised by a fit after the preemption save; exits with PREEMPTED_EXIT_CODE unless caught."""

    def __init__(self, message: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionWatch:
    """Notes SIGTERM while active (a context manager) and tells when all workers should stop."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy, self.signalled, self._previous = strategy, False, None
        self._several_workers = roles.num_workers(strategy) > 1 and not roles.loop_on_chief_only(strategy)
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


def exit_after_save(*, epoch: int, step: int, where: str, chief: bool) -> None:
    """Says where the preemption save went (on the chief) and raises Preempted: the one ending
    of a preempted fit, for the Trainer's loop and the BackupAndRestore repair alike."""
    message = (f"preempted (SIGTERM): saved epoch {epoch} step {step} to {where}; exiting with "
               f"{PREEMPTED_EXIT_CODE}, the next run resumes there")
    if chief:
        print(f"tfdp: {message}", flush=True)
    raise Preempted(message)


def restore_default_sigterm() -> None:
    """Gives SIGTERM back its default action (end the process) unless the program set its own.

    TensorFlow installs a C++ SIGTERM handler with its coordination service; Python still
    reports SIG_DFL then, so setting SIG_DFL again is what removes TensorFlow's.
    """
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
