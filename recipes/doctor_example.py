"""The recipe's model and data in the shape `tfdp doctor` takes (README.md's example).

    tfdp doctor --model recipes.doctor_example:model --data recipes.doctor_example:data

Write the same two functions for your own model: one returns a compiled Keras model (it
is called inside the strategy's scope on the replicas), the other an unbatched
tf.data.Dataset of (x, y) or arrays (x, y).
"""

from __future__ import annotations


def model():
    """The recipe's small CNN for 8x8 digits, compiled as the recipe compiles it for model.fit."""
    import keras

    from recipes import models

    net = models.small_cnn(keras, (8, 8, 1), 10)
    net.compile(optimizer=keras.optimizers.Adam(0.003, global_clipnorm=1.0), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    return net


def data():
    """The 1,797 digits the recipes ship, as arrays (x, y): no download."""
    from recipes import digits

    return digits.load()
