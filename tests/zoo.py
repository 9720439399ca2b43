"""The model families users train, with data that makes replicas unequal.

Each family: a model builder, `compile` arguments as a user writes them, and data whose
global batches (GLOBAL_BATCH = 16, an uneven last batch of 5) put ~3x the valid tokens in
the first half (replica 0's share) than in the second. Shared by the in-process tests
and the multi-worker job (tests/test_zoo.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

GLOBAL_BATCH = 16
EXAMPLES = 3 * GLOBAL_BATCH + 5
VOCAB, STEPS, TAGS = 20, 12, 5


def _tokens(rng, n):
    """Padded token ids (0 = padding): long sequences in the first half of every batch, short in the second."""
    lengths = np.where((np.arange(n) % GLOBAL_BATCH) < GLOBAL_BATCH // 2,
                       rng.integers(9, STEPS + 1, size=n), rng.integers(1, 4, size=n))
    ids = rng.integers(1, 7, size=(n, STEPS))  # few ids: rows repeat within a batch
    return np.where(np.arange(STEPS)[None, :] < lengths[:, None], ids, 0).astype("int32")


def _masked_embedding():
    return keras.layers.Embedding(VOCAB, 6, mask_zero=True)


def tagger():
    inputs = keras.Input((STEPS,), dtype="int32")
    return keras.Model(inputs, keras.layers.Dense(TAGS)(_masked_embedding()(inputs)))


def tagger_data(rng):
    x = _tokens(rng, EXAMPLES)
    return x, (rng.integers(0, TAGS, size=x.shape) * (x > 0)).astype("int32")


def classifier():
    inputs = keras.Input((STEPS,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(_masked_embedding()(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(pooled))


def binary_data(rng):
    x = _tokens(rng, EXAMPLES)
    return x, rng.integers(0, 2, size=(EXAMPLES, 1)).astype("float32")


def encoder():
    inputs = keras.Input((STEPS,), dtype="int32")
    h = _masked_embedding()(inputs)
    h = keras.layers.LayerNormalization()(h + keras.layers.MultiHeadAttention(2, 3)(h, h))
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h)))


def gru():
    inputs = keras.Input((STEPS,), dtype="int32")
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GRU(4)(_masked_embedding()(inputs))))


def recommender():
    user, item = keras.Input((), dtype="int32", name="user"), keras.Input((), dtype="int32", name="item")
    u = keras.layers.Embedding(9, 4)(user)
    i = keras.layers.Embedding(7, 4)(item)
    return keras.Model({"user": user, "item": item}, keras.layers.Dot(axes=1)([u, i]))


def recommender_data(rng):
    x = {"user": rng.integers(0, 9, size=EXAMPLES).astype("int32"),
         "item": rng.integers(0, 7, size=EXAMPLES).astype("int32")}
    return x, rng.normal(size=(EXAMPLES, 1)).astype("float32")


def two_outputs():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, activation="tanh")(inputs)
    return keras.Model(inputs, {"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(2, name="b")(h)})


def two_outputs_data(rng):
    x = rng.normal(size=(EXAMPLES, 4)).astype("float32")
    return x, {"a": rng.normal(size=(EXAMPLES, 1)).astype("float32"),
               "b": rng.normal(size=(EXAMPLES, 2)).astype("float32")}


def frozen():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(1)])
    model.layers[0].trainable = False
    return model


def dense_data(rng):
    return rng.normal(size=(EXAMPLES, 4)).astype("float32"), rng.normal(size=(EXAMPLES, 1)).astype("float32")


@dataclasses.dataclass(frozen=True)
class Family:
    model: Callable[[], keras.Model]
    data: Callable[[np.random.Generator], tuple]
    loss: Callable[[], object]
    loss_weights: dict | None = None


def _bce():
    return keras.losses.BinaryCrossentropy(from_logits=True)


FAMILIES = {
    "tagger": Family(tagger, tagger_data, lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    "classifier": Family(classifier, binary_data, _bce),
    "encoder": Family(encoder, binary_data, _bce),
    "gru": Family(gru, binary_data, _bce),
    "recommender": Family(recommender, recommender_data, lambda: "mse"),
    "two_outputs": Family(two_outputs, two_outputs_data, lambda: {"a": "mse", "b": "mae"},
                          loss_weights={"a": 1.0, "b": 0.5}),
    "frozen": Family(frozen, dense_data, lambda: "mse"),
}

OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.2),
    "adam": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(0.03, decay_steps=3, decay_rate=0.7)),
    "adam_accumulating": lambda: keras.optimizers.Adam(0.03, gradient_accumulation_steps=2),
}


def _optimizer(optimizer):
    """A new optimizer: by its name in OPTIMIZERS, or from a factory."""
    return optimizer() if callable(optimizer) else OPTIMIZERS[optimizer]()


def data(name: str):
    return FAMILIES[name].data(np.random.default_rng(3))


def dataset(name: str, *, batch: int = GLOBAL_BATCH) -> tf.data.Dataset:
    """The family's data in global batches (the last one uneven)."""
    return tf.data.Dataset.from_tensor_slices(data(name)).batch(batch)


def build(name: str, strategy=None, *, optimizer="sgd", **compile_kwargs) -> keras.Model:
    """The family's model, seeded, built (and compiled as a user would) in `strategy`'s scope."""
    family = FAMILIES[name]
    keras.utils.set_random_seed(7)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = family.model()
        model.compile(optimizer=_optimizer(optimizer), loss=family.loss(), loss_weights=family.loss_weights,
                      **compile_kwargs)
    return model


def fit(name: str, strategy=None, *, optimizer="sgd", epochs: int = 2, batch: int = GLOBAL_BATCH,
        **compile_kwargs) -> list[np.ndarray]:
    """model.fit of the family; returns the weights."""
    model = build(name, strategy, optimizer=optimizer, **compile_kwargs)
    model.fit(dataset(name, batch=batch), epochs=epochs, verbose=0, shuffle=False)
    return model.get_weights()


def trainer_fit(name: str, strategy, *, optimizer="sgd", epochs: int = 2, batch: int = GLOBAL_BATCH,
                **options) -> list[np.ndarray]:
    """tfdp.Trainer.fit of the family (the loss as compile takes it); returns the weights."""
    import tfdp

    family = FAMILIES[name]
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = family.model()
    trainer = tfdp.Trainer(model, optimizer=_optimizer(optimizer), loss=family.loss(),
                           loss_weights=family.loss_weights, strategy=strategy, **options)
    trainer.fit(dataset(name, batch=batch), epochs=epochs, verbose=0)
    return model.get_weights()


def largest_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b))


def doctor_tagger():
    """For `tfdp doctor --model tests.zoo:doctor_tagger --data tests.zoo:doctor_tagger_data`."""
    model = tagger()
    model.compile(optimizer=OPTIMIZERS["adam"](), loss=FAMILIES["tagger"].loss(), metrics=["accuracy"])
    return model


def doctor_tagger_data():
    return data("tagger")
