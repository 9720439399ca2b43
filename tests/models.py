"""Small models and data shared by the equivalence tests and their worker processes."""

import numpy as np
import keras
import tensorflow as tf

GLOBAL_BATCH = 8
# The optimizers of the equivalence tests: SGD, and Adam (it reads `iterations`) on a schedule.
OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "adam": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.7)),
}


def dict_model():
    """Dict inputs and an L2-regularised layer: both need care under replicas."""
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.05))(h)
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(h))


def conv_model():
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])


def fp16_model():
    """For mixed_float16: the output layer computes in float32."""
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(1, dtype="float32")])


def fp16_fit_with_a_nan_on_replica_1(strategy):
    """Under mixed_float16: one batch of 8 whose only NaN is in replica 1's half, fit once.

    Returns:
        (model, its weights before the fit, its loss-scale optimizer's initial scale).
    """
    x = np.ones((8, 4), "float32")
    x[5, 2] = np.nan
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = fp16_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    initial = model.get_weights()
    model.fit(x, np.ones((8, 1), "float32"), batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model, initial, float(model.optimizer.initial_scale)


def dict_data(n):
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(n, 4)).astype("float32"), "b": rng.normal(size=(n, 3)).astype("float32")}
    return x, rng.normal(size=(n, 1)).astype("float32")


def conv_data(n):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 6, 6, 1)).astype("float32"), rng.integers(0, 3, size=(n,))


def train(strategy, make_model, data, *, epochs=2, loss="mse", optimizer=None, fit_kwargs=None,
          batch_size=GLOBAL_BATCH, **compile_kwargs):
    """Builds with a fixed seed in `strategy`'s scope and fits on `batch_size` batches."""
    x, y = data
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = make_model()
        model.compile(optimizer=optimizer() if optimizer else keras.optimizers.SGD(0.1), loss=loss,
                      **compile_kwargs)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    history = model.fit(dataset, epochs=epochs, **{"verbose": 0, **(fit_kwargs or {})})
    return model, history.history


class BatchRecorder(keras.callbacks.Callback):
    """Records each on_train_batch_end a callback sees: [epoch, batch, logs["loss"]]."""

    def __init__(self):
        super().__init__()
        self.seen, self.epoch = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([self.epoch, batch, float(logs["loss"])])
