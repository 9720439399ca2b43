"""The independent one-device loops every equivalence test compares against, and one way to compare.

Written the textbook way (GradientTape, the Keras optimizer's apply), with nothing of tfdp:
mean loss + model.losses over each optimizer step's examples, clipped by global norm.
"""

import keras
import numpy as np
import tensorflow as tf

from tests.models import OPTIMIZERS, dict_data, dict_model

ATOL = 1e-5  # float32 sums in another order: what "the same weights" means in these tests


def assert_weights_close(got, want, *, atol: float = ATOL) -> None:
    """Each weight array of `got` (arrays or nested lists from a worker's JSON) equals `want`'s."""
    got, want = list(got), list(want)
    assert len(got) == len(want), f"{len(got)} weights, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(np.asarray(g), w, atol=atol, rtol=0, err_msg=f"weight {i}")


def textbook_step(model, opt, x, y, *, clip=None):
    """One optimizer step on one device: the mean mse + model.losses, clipped by global norm."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.mean_squared_error(y, model(x, training=True)))
        loss += tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    if clip:
        grads, _ = tf.clip_by_global_norm(grads, clip)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return float(loss)


def running_means(step_losses, *, steps_per_epoch):
    """What a callback sees after each step (its epoch's mean loss so far, weighted by examples), per
    epoch: [[epoch, step, mean], ...], from `plain_loop`'s [(loss, examples), ...]."""
    seen = []
    for epoch in range(len(step_losses) // steps_per_epoch):
        steps = step_losses[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]
        for step in range(steps_per_epoch):
            losses, examples = np.array(steps[:step + 1]).T
            seen.append([epoch, step, float((losses * examples).sum() / examples.sum())])
    return seen


def plain_loop(make_model, data, *, batch_size, epochs, clip=None, optimizer="sgd", accumulate=1,
               steps_per_epoch=None, step_losses=None):
    """One device, epoch by epoch: `accumulate` batches make one step (a final smaller group is a
    smaller step); `steps_per_epoch` reads the data again whenever it ends. `step_losses`, a list,
    gets each step's (loss, examples).

    Returns:
        (the weights, the optimizer's iterations).
    """
    x, y = data
    keras.utils.set_random_seed(7)
    model = make_model()
    opt = OPTIMIZERS[optimizer]()
    groups = [list(range(i, min(i + batch_size * accumulate, len(y))))
              for i in range(0, len(y), batch_size * accumulate)]
    if steps_per_epoch:
        groups = [groups[i % len(groups)] for i in range(steps_per_epoch * epochs)]
        epochs = 1
    for _ in range(epochs):
        for index in groups:
            loss = textbook_step(model, opt, {k: v[index] for k, v in x.items()}, y[index], clip=clip)
            if step_losses is not None:
                step_losses.append((loss, len(index)))
    return model.get_weights(), int(opt.iterations.numpy())


def repeated_loop(optimizer: str, *, examples: int, batch_size: int, steps: int, clip=None, read_again_every=None):
    """One device over `data.repeat().batch(batch_size)` (batches run across the data's end), `steps` steps;
    `read_again_every` N steps the data is read again from its beginning.

    Returns:
        (the weights, the optimizer's iterations).
    """
    keras.utils.set_random_seed(7)
    model = dict_model()
    opt = OPTIMIZERS[optimizer]()
    x, y = dict_data(examples)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch_size)
    batches = iter(data)
    for step in range(steps):
        if read_again_every and step and step % read_again_every == 0:
            batches = iter(data)
        xb, yb = next(batches)
        textbook_step(model, opt, xb, yb, clip=clip)
    return model.get_weights(), int(opt.iterations.numpy())
