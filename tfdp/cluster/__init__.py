"""Where the cluster comes from: TF_CONFIG, SLURM, a Kubernetes Indexed Job. No TensorFlow.

`TFConfig` is the validated data model every other part of tfdp reads; `slurm` and
`kubernetes` turn a scheduler's environment into it (one module per environment);
`python -m tfdp.cluster slurm|kubernetes` prints this task's TF_CONFIG.
"""

from tfdp.cluster.slurm import expand_hostlist, expand_tasks_per_node
from tfdp.cluster.tf_config import ENV_VAR, JOB_ID_ENV, SEED_ENV, TASK_TYPES, TRAINING_TASK_TYPES, TFConfig

__all__ = ["TFConfig", "ENV_VAR", "JOB_ID_ENV", "SEED_ENV", "TASK_TYPES", "TRAINING_TASK_TYPES", "expand_hostlist",
           "expand_tasks_per_node"]
