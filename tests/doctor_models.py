"""Models for the doctor's tests: `tfdp doctor --model tests.doctor_models:<name>`."""

from __future__ import annotations

import numpy as np


def _compiled(*layers, model_class=None):
    import keras

    net = (model_class or keras.Sequential)([keras.Input((6,)), *layers, keras.layers.Dense(1, name="out")])
    net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return net


def plain():
    import keras

    return _compiled(keras.layers.Dense(8, activation="relu", name="hidden"))


def batch_norm():
    import keras

    return _compiled(keras.layers.Dense(8, name="hidden"), keras.layers.BatchNormalization(name="bn"))


def _noise_layer():
    import keras
    import tensorflow as tf

    class Noise(keras.layers.Layer):
        """Adds unseeded noise in training, per replica."""

        def call(self, x, training=None):
            return x + tf.random.normal(tf.shape(x)) if training else x

    return Noise(name="noise")


def unseeded_noise():
    import keras

    return _compiled(keras.layers.Dense(8, name="hidden"), _noise_layer())


def dropout():
    import keras

    return _compiled(keras.layers.Dense(8, name="hidden"), keras.layers.Dropout(0.5, seed=1, name="drop"))


def summed_loss():
    """A custom train_step whose loss is a plain mean: not scaled per replica."""
    import keras
    import tensorflow as tf

    class SummedLoss(keras.Sequential):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(x, training=True) - y))
            self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
            return {"loss": loss}

    return _compiled(keras.layers.Dense(8, name="hidden"), model_class=SummedLoss)


def not_compiled():
    import keras

    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x @ rng.normal(size=(6, 1))).astype("float32")
