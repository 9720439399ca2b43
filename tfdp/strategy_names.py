"""The names `tfdp.create_strategy` accepts, importable without TensorFlow (flags, early checks)."""

STRATEGY_NAMES = ("auto", "default", "one_device", "mirrored", "multi_worker", "parameter_server")
COMMUNICATIONS = ("auto", "ring", "nccl")
