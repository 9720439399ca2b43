"""Where a training step's time goes: compute, input wait, all-reduce, the rest.

Times three stripped-down loops, each `steps` steps inside one tf.function under the
benchmark's strategy, and subtracts:

- compute: forward + backward on a batch already on the replica (no input, no collective);
- input wait: the same, pulling each batch from the distributed iterator, minus compute;
- all-reduce: the same plus ONE packed all-reduce of the gradients (as tfdp.Trainer
  does), minus the above: the transfer plus waiting for the slowest worker; with local
  steps H, one packed all-reduce of the weights every H steps instead;
- other: the measured full step minus all three: the optimizer update, metrics and the
  loop's own overhead.

Every worker must call `measure` alike: the all-reduce loop is a collective.
"""

from __future__ import annotations

import statistics
import time


def measure(*, strategy, model, loss, iterator, steps: int, repeats: int, step_ms: float,
            all_reduce_dtype: str = "float32", local_steps: int = 1) -> dict[str, float]:
    """Milliseconds per step of each piece (medians of `repeats` timed calls).

    Args:
        strategy: the strategy the model was built under.
        model: the benchmark's model.
        loss: a Keras loss object (its unreduced values are summed).
        iterator: an iterator over the distributed dataset of global batches.
        steps: steps per timed call.
        repeats: timed calls per loop (after one untimed warm-up call), interleaved.
        step_ms: the full step's measured milliseconds, to attribute the rest.
        all_reduce_dtype: "float32", "float16" or "bfloat16": the dtype the gradients are sent in.
        local_steps: H > 1: the weights are all-reduced every H steps (tfdp.Trainer(local_steps=H)).
    """
    import tensorflow as tf

    from tfdp.training import all_reduce

    def gradients(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(loss.call(y, model(x, training=True)))
        return tape.gradient(total, model.trainable_variables)

    def consumed(grads):  # a scalar that needs every gradient, so none is pruned
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    def local(batch):
        return consumed(gradients(batch))

    def reduced(batch):
        return tf.reduce_sum(all_reduce.sum_packed(all_reduce.pack(gradients(batch)), all_reduce_dtype))

    def averaged():
        weights = [tf.convert_to_tensor(v.value) for v in model.weights]
        return tf.reduce_sum(all_reduce.sum_packed(all_reduce.pack(weights)))

    def loop(replica_fn, average_every=0):
        @tf.function
        def run(n, *fixed_batch):
            total = tf.constant(0.0)
            for i in tf.range(n):
                batch = fixed_batch[0] if fixed_batch else next(iterator)
                result = strategy.run(replica_fn, args=(batch,))
                total += tf.add_n(strategy.experimental_local_results(result))
                if average_every and i % average_every == average_every - 1:
                    total += tf.add_n(strategy.experimental_local_results(strategy.run(averaged)))
            return total
        return run

    fixed = next(iterator)
    with_all_reduce = loop(reduced) if local_steps == 1 else loop(local, average_every=local_steps)
    runs = {"compute": (loop(local), (fixed,)), "with_input": (loop(local), ()),
            "with_all_reduce": (with_all_reduce, ())}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run, args in runs.values():
        run(tf.constant(steps), *args)  # tracing and warm-up
    for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits all alike
        for name, (run, args) in runs.items():
            start = time.perf_counter()
            run(tf.constant(steps), *args).numpy()
            times[name].append((time.perf_counter() - start) * 1000 / steps)
    compute, with_input, with_all_reduce = (statistics.median(times[name]) for name in runs)
    return {"step_ms": step_ms, "compute_ms": compute, "input_wait_ms": with_input - compute,
            "all_reduce_ms": with_all_reduce - with_input, "other_ms": step_ms - with_all_reduce}
