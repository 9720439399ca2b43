"""Input pipelines for data parallelism: batch arithmetic and exactly-once sharding.

`distribute(strategy, dataset_or_fn, global_batch_size=...)` shards an UNBATCHED
dataset per input pipeline (one per worker), batches it per replica and prefetches.
With `drop_remainder=False` every example is seen exactly once per epoch across all
replicas of all workers, the last partial batch included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from tfdp import _compat, roles
from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError, check_choice, check_whole

tf = import_tensorflow()

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

logger = logging.getLogger("tfdp")

SHARD_POLICIES = ("auto", "file", "data", "off")
# tf.data ops that read files: a dataset containing one is "made of files".
_READER_OPS = ("TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
               "FixedLengthRecordDatasetV2", "ArrayRecordDataset")
_warned: set[str] = set()

DatasetOrFn = tf.data.Dataset | Callable[[tf.distribute.InputContext], tf.data.Dataset]


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The batch each replica computes on, from the global batch.

    Raises:
        ConfigError: when the global batch does not divide by the replicas.
    """
    check_whole("global_batch_size", global_batch_size)
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        lower = global_batch_size // replicas * replicas
        options = " or ".join(str(n) for n in (lower, lower + replicas) if n > 0)
        raise ConfigError(f"global_batch_size={global_batch_size} does not divide by the {replicas} replicas "
                          f"in sync. Fix: use a multiple of {replicas}, such as {options}.")
    return global_batch_size // replicas


def global_batch_size(per_replica_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The global batch that gives each replica `per_replica_batch_size` examples."""
    check_whole("per_replica_batch_size", per_replica_batch_size)
    return per_replica_batch_size * strategy.num_replicas_in_sync


def per_worker_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The part of the global batch each worker's input pipeline produces per step.

    Raises:
        ConfigError: when the global batch does not divide by the replicas.
    """
    return per_replica_batch_size(global_batch_size, strategy) * (
        strategy.num_replicas_in_sync // roles.num_workers(strategy))


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned and roles.is_chief():
        _warned.add(key)
        logger.warning(message, *args)


def source_files(dataset: tf.data.Dataset) -> int | None:
    """How many files `dataset` reads, or None when it is not made of files.

    Reads the dataset's graph: a file reader op (in the graph or in a function such as an
    interleave's), fed from a list of file names.
    """
    graph = _compat.dataset_graph_def(dataset)
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    if not any(n.op in _READER_OPS for n in nodes):
        return None
    consts = {n.name: n for n in graph.node if n.op == "Const"}
    for node in graph.node:
        if node.op == "TensorSliceDataset":
            for name in node.input:
                const = consts.get(name.split(":")[0].split("/_")[0]) or consts.get(name)
                if const is not None and const.attr["value"].tensor.dtype == tf.string.as_datatype_enum:
                    dims = const.attr["value"].tensor.tensor_shape.dim
                    return dims[0].size if dims else 1
    return None


def _resolve_policy(dataset: tf.data.Dataset, shard: str, pipelines: int) -> tuple[str, int | None]:
    """("file" | "data" | "off", number of files) for this dataset on `pipelines` workers."""
    if pipelines == 1 or shard == "off":
        return "off", None
    files = source_files(dataset) if shard in ("auto", "file") else None
    if shard == "file" and (files is None or files < pipelines):
        found = "no files" if files is None else f"{files} file(s)"
        raise ConfigError(f'shard="file": the dataset reads {found}, fewer than the {pipelines} input '
                          'pipelines (workers). Fix: write at least one file per worker, or use shard="data" '
                          '(or "auto", which picks it).')
    if shard == "file" or (shard == "auto" and files is not None and files >= pipelines):
        if files % pipelines:
            _warn_once("lopsided", "tfdp: %d files on %d workers: some workers read more files than others "
                                   "and wait for them every epoch. Write a multiple of %d files.",
                       files, pipelines, pipelines)
        _warn_once("choice", "tfdp: sharding by FILE (%d files over %d workers)", files, pipelines)
        return "file", files
    if shard == "auto":
        _warn_once("choice", "tfdp: sharding by DATA (%s over %d workers)",
                   "not files" if files is None else f"only {files} file(s)", pipelines)
    return "data", files


def _shard_file(dataset: tf.data.Dataset, pipelines: int, index: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    return _compat.auto_shard_dataset(dataset.with_options(options), pipelines, index)


def _check_size(dataset: tf.data.Dataset, global_batch_size: int) -> None:
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        _warn_once("infinite", "tfdp: the dataset is infinite (it repeats): pass steps_per_epoch to fit, or "
                               "every epoch runs forever.")
    elif 0 <= cardinality < global_batch_size:
        _warn_once("small", "tfdp: the dataset has %d examples, fewer than one global batch of %d: every "
                            "step is a partial batch.", cardinality, global_batch_size)


_BATCH_OPS = ("BatchDataset", "BatchDatasetV2", "PaddedBatchDataset", "PaddedBatchDatasetV2",
              "ParallelBatchDataset")


def _check_unbatched(dataset: tf.data.Dataset, global_batch_size: int) -> None:
    """Raises ConfigError when `dataset` was batched already (its batches would be batched again)."""
    ops = [node.op for node in _compat.dataset_graph_def(dataset).node]
    batched = [i for i, op in enumerate(ops) if op in _BATCH_OPS]
    unbatched = [i for i, op in enumerate(ops) if op == "UnbatchDataset"]
    if batched and (not unbatched or max(unbatched) < max(batched)):
        raise ConfigError(f"distribute(dataset_or_fn=...): the dataset is already batched, and distribute "
                          f"batches it again (global_batch_size={global_batch_size}). Fix: pass the dataset "
                          "before .batch(...), or pass the batched dataset to model.fit / tfdp.Trainer directly.")


def distribute(strategy: tf.distribute.Strategy, dataset_or_fn: DatasetOrFn, *, global_batch_size: int,
               shard: str = "auto", drop_remainder: bool = False, shuffle_buffer: int | None = None,
               shuffle_seed: int | None = None,
               prefetch: int | None = tf.data.AUTOTUNE) -> tf.distribute.DistributedDataset:
    """Shards, batches per replica and distributes an unbatched input pipeline.

    Args:
        strategy: the strategy whose replicas consume the batches.
        dataset_or_fn: an UNBATCHED `tf.data.Dataset`, or `fn(input_context)` returning one
            (called once per worker; its randomness agrees across workers because tfdp
            multi-worker strategies fix the global seed).
        global_batch_size: examples per step over all replicas and workers.
        shard: "auto" (FILE when the dataset reads at least one file per worker, else
            DATA), "file" (each worker reads whole files), "data" (each worker keeps
            every N-th example) or "off" (the dataset or fn shards itself).
        drop_remainder: drop the last partial batch. With False every example is seen
            exactly once per epoch, the last partial batch included.
        shuffle_buffer: shuffle with this buffer (a new order every epoch), before DATA
            sharding (so the workers agree) or after FILE sharding; None: no shuffle.
        shuffle_seed: the shuffle's seed; None: the job's seed, the same on every worker
            (see `tfdp.create_strategy`).
        prefetch: batches to prefetch per worker (None: no prefetch).

    Returns:
        A distributed dataset for `model.fit` or `tfdp.Trainer`, or to iterate with
        `strategy.run`.

    Raises:
        ConfigError: a batch size that does not divide, an unknown shard policy, or FILE
            sharding over fewer files than workers.
    """
    check_choice("distribute(shard)", shard, SHARD_POLICIES)
    per_replica = per_replica_batch_size(global_batch_size, strategy)
    if not isinstance(dataset_or_fn, tf.data.Dataset) and not callable(dataset_or_fn):
        raise ConfigError(f"distribute(dataset_or_fn={type(dataset_or_fn).__name__}): give an unbatched "
                          "tf.data.Dataset or a function input_context -> Dataset.")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = dataset_or_fn(context) if callable(dataset_or_fn) else dataset_or_fn
        if not isinstance(dataset, tf.data.Dataset):
            raise ConfigError(f"distribute: the dataset function returned a {type(dataset).__name__}, "
                              "not a tf.data.Dataset.")
        _check_unbatched(dataset, global_batch_size)
        _check_size(dataset, global_batch_size)
        pipelines, index = context.num_input_pipelines, context.input_pipeline_id
        policy, _ = _resolve_policy(dataset, shard, pipelines)
        shuffle = (lambda d: d.shuffle(shuffle_buffer, seed=shuffle_seed)) if shuffle_buffer else (lambda d: d)
        if policy == "file":
            dataset = shuffle(_shard_file(dataset, pipelines, index))
        else:
            dataset = shuffle(dataset)
            dataset = dataset.shard(pipelines, index) if policy == "data" else dataset
        dataset = dataset.batch(per_replica, drop_remainder=drop_remainder)
        return dataset.prefetch(prefetch) if prefetch is not None else dataset

    if _same_full_batches_on_every_worker(strategy, dataset_or_fn, shard, per_replica, drop_remainder):
        with _compat.partial_batch_handling_off(strategy):
            return strategy.distribute_datasets_from_function(dataset_fn)
    return strategy.distribute_datasets_from_function(dataset_fn)


def _same_full_batches_on_every_worker(strategy, dataset_or_fn, shard: str, per_replica: int,
                                       drop_remainder: bool) -> bool:
    """Whether every worker provably reads the same number of full batches, and nothing else.

    Then the cross-worker end-of-data vote tf.distribute adds to every step of a finite
    dataset under multi_worker (one all-reduce per step) cannot change anything and is
    skipped: DATA sharding of a dataset of known size, drop_remainder, one replica per
    worker, and floor(ceil((size - w) / workers) / batch) the same for every worker w.
    """
    workers = roles.num_workers(strategy)
    if workers < 2 or strategy.num_replicas_in_sync != workers or not drop_remainder \
            or not isinstance(dataset_or_fn, tf.data.Dataset):
        return False
    size = int(dataset_or_fn.cardinality())
    if size < 0 or _resolve_policy(dataset_or_fn, shard, workers)[0] != "data":
        return False
    return len({-(-(size - w) // workers) // per_replica for w in range(workers)}) == 1


def tfds_dataset_fn(builder: "tfds.core.DatasetBuilder", split: str, **as_dataset_kwargs
                    ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A dataset function that reads this worker's part of a TFDS split.

    Use it with `distribute(..., shard="off")`. With at least one file per worker each
    worker reads whole files (tfds.ReadConfig with the input context); with fewer files
    each reads an even slice of the split (tfds.even_splits).

    Args:
        builder: a prepared TFDS builder (`tfds.builder(...)` or `tfds.builder_from_directory`).
        split: the split to read, e.g. "train".
        **as_dataset_kwargs: passed to `builder.as_dataset` (shuffle_files, decoders, ...).
    """
    import tensorflow_datasets as tfds

    num_files = builder.info.splits[split].num_shards

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        pipelines, index = context.num_input_pipelines, context.input_pipeline_id
        if pipelines > 1 and num_files >= pipelines:
            read_config = tfds.ReadConfig(input_context=context)
            return builder.as_dataset(split=split, read_config=read_config, **as_dataset_kwargs)
        part = tfds.even_splits(split, n=pipelines)[index] if pipelines > 1 else split
        return builder.as_dataset(split=part, **as_dataset_kwargs)

    return dataset_fn


def distribute_global_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset
                              ) -> tf.distribute.DistributedDataset:
    """`distribute` for a dataset of GLOBAL batches (what model.fit and tfdp.Trainer take).

    The batches are taken apart and batched again per replica through `distribute`, so they
    get the same exactly-once sharding: each step's global batch holds the same examples as
    on one device, the last partial batch included (on several workers each worker keeps
    every N-th example of it).

    Raises:
        ConfigError: the batch size does not divide by the replicas, or the dataset is empty.
    """
    batch_size = tf.nest.flatten(dataset.element_spec)[0].shape[:1].num_elements()
    drop_remainder = batch_size is not None  # a static batch size: every batch is full
    if batch_size is None:
        first = next(iter(dataset.take(1)), None)
        if first is None:
            raise ConfigError("the dataset yields no batch, so nothing would train. Fix: check the dataset "
                              "(an empty file list, a filter that drops everything, or take(0)).")
        batch_size = int(tf.shape(tf.nest.flatten(first)[0])[0])
    unbatched = dataset.unbatch()
    batches = int(dataset.cardinality())
    if drop_remainder and batches >= 0:  # full batches of a known count: the size is known too
        unbatched = unbatched.apply(tf.data.experimental.assert_cardinality(batches * batch_size))
    return distribute(strategy, unbatched, global_batch_size=batch_size, drop_remainder=drop_remainder)
