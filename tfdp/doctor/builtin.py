"""The doctor's built-in check: a small model that exercises what tfdp repairs.

Adam on a learning-rate schedule with global-norm clipping (Keras 3 clips per replica
before the all-reduce), a global batch of 9 on 2 replicas (uneven shares of 5 and 4,
which stock Keras weights unequally): stock Keras gives other weights on 2 replicas
than on one device; with tfdp's repairs they agree.
"""

from __future__ import annotations

import numpy as np


def model():
    """A compiled two-layer regression model."""
    import keras

    net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh", name="hidden"),
                            keras.layers.Dense(1, name="out")])
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)
    net.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=0.5), loss="mse", metrics=["mae"])
    return net


def data():
    """72 examples (x, y) of a noisy linear target."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(72, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)) + 0.1 * rng.normal(size=(72, 1))).astype("float32")
    return x, y
