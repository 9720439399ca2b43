"""TF_CONFIG validation: every malformed config is a ConfigError naming field and fix."""

import json
import subprocess
import sys

import pytest

from tests.workers import ROOT, _env, run_python
from tfdp import ConfigError
from tfdp.cluster import TFConfig, expand_hostlist

GOOD = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}


def with_(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        target, _, leaf = key.rpartition("__")
        node = data[target] if target else data
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    return json.dumps(data)


MALFORMED = {
    "bad json": ("{'cluster': {}}", ["not valid JSON", "double quotes"]),
    "truncated json": ('{"cluster": {"worker": ["a:1"]', ["not valid JSON", "line 1"]),
    "not an object": ('["127.0.0.1:2222"]', ["JSON list, not an object", '"cluster" and "task"']),
    "missing cluster": (with_(cluster=...), ["cluster: is missing", "Fix:"]),
    "missing task": (with_(task=...), ["task: is missing", '"type": "worker"']),
    "cluster not object": (with_(cluster=["127.0.0.1:1"]), ["cluster: is a JSON list", "Fix:"]),
    "empty cluster": (with_(cluster={}), ["cluster: is empty"]),
    "task not object": (with_(task="worker"), ["task: is a str", '{"type": "worker", "index": 0}']),
    "missing type": (with_(task__type=...), ["task.type: is missing"]),
    "missing index": (with_(task__index=...), ["task.index: is missing"]),
    "index out of range": (with_(task__index=2), ["task.index: 2 is out of range", "from 0 to 1"]),
    "index negative": (with_(task__index=-1), ["task.index: -1 is out of range", "from 0 to 1"]),
    "index not int": (with_(task__index="0"), ["task.index: '0' is not an integer"]),
    "index bool": (with_(task__index=True), ["task.index: True is not an integer"]),
    "index float": (with_(task__index=1.0), ["task.index: 1.0 is not an integer"]),
    "unknown task type": (with_(task__type="wroker"), ["task.type: 'wroker' is not a known", 'Did you mean "worker"']),
    "type absent from cluster": (with_(task__type="chief"), ['task.type: "chief" has no job in cluster', 'add a "chief" list']),
    "unknown job": (with_(cluster={"workers": ["127.0.0.1:1"]}), ['cluster["workers"]: is not a known job', 'Did you mean "worker"']),
    "no port": (with_(cluster={"worker": ["127.0.0.1", "127.0.0.1:2"]}), ['cluster["worker"][0]', "has no port", '"127.0.0.1:12345"']),
    "port not a number": (with_(cluster={"worker": ["host:http", "h:2"]}), ['cluster["worker"][0]', "not a number"]),
    "port zero": (with_(cluster={"worker": ["h:0", "h:2"]}), ['cluster["worker"][0]', "out of range", "1 and 65535"]),
    "port too big": (with_(cluster={"worker": ["h:1", "h:70000"]}), ['cluster["worker"][1]', "port 70000", "1 and 65535"]),
    "address not string": (with_(cluster={"worker": [2222, "h:2"]}), ['cluster["worker"][0]', "not an address string"]),
    "duplicate address": (with_(cluster={"worker": ["h:1", "h:1"]}), ['cluster["worker"][1]', 'also cluster["worker"][0]', "its own host:port"]),
    "duplicate across jobs": (json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}), ['cluster["worker"][0]', 'also cluster["chief"][0]']),
    "job not list": (with_(cluster={"worker": "127.0.0.1:2222"}), ['cluster["worker"]: is a str, not a list', '"worker": ["127.0.0.1:12345"]']),
    "job a dict": (with_(cluster={"worker": {"0": "h:1"}}), ['cluster["worker"]: is a dict, not a list']),
    "empty job": (with_(cluster={"worker": []}), ['cluster["worker"]: is an empty list']),
    "two chiefs": (json.dumps({"cluster": {"chief": ["h:1", "h:2"], "worker": ["h:3"]}, "task": {"type": "worker", "index": 0}}), ['cluster["chief"]: has 2 addresses', "only one chief"]),
    "typo top-level key": (json.dumps({"clsuter": GOOD["cluster"], "task": GOOD["task"]}), ['key "clsuter"', 'Did you mean "cluster"']),
    "typo task key": (with_(task={"type": "worker", "idx": 0}), ['task key "idx"', 'Did you mean "index"']),
    "typo cloud key": (with_(enviroment="cloud"), ['key "enviroment"', 'Did you mean "environment"']),
    "cloud job not object": (with_(job="x"), ['key "job": is a str, not a JSON object']),
    "trial not string": (with_(task={"type": "worker", "index": 0, "trial": 3}), ['task key "trial": is a int']),
}


@pytest.mark.parametrize("text,expected", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_tf_config_names_field_and_fix(text, expected):
    with pytest.raises(ConfigError) as raised:
        TFConfig.parse(text)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    for part in expected:
        assert part in message, message


def test_roles_of_a_chief_worker_cluster():
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"], "evaluator": ["127.0.0.1:4"]}
    chief = TFConfig.from_dict({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    worker0 = TFConfig.from_dict({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    evaluator = TFConfig.from_dict({"cluster": cluster, "task": {"type": "evaluator", "index": 0}})
    assert (chief.num_workers, chief.num_tasks) == (3, 4)
    assert chief.is_chief and not worker0.is_chief
    assert evaluator.is_chief  # of its own one-task cluster, as TensorFlow has it
    assert (chief.worker_rank, worker0.worker_rank, evaluator.worker_rank) == (0, 1, None)
    assert worker0.address == "127.0.0.1:2"


def test_worker_zero_is_chief_without_a_chief_job():
    config = TFConfig.parse(json.dumps(GOOD))
    assert config.num_workers == 2 and config.task_index == 1 and not config.is_chief
    assert TFConfig.local_workers([2222, 2223], 0).is_chief


def test_json_round_trip_is_what_tensorflow_reads():
    config = TFConfig.local_workers([2222, 2223], 1)
    assert json.loads(config.to_json()) == GOOD
    assert TFConfig.parse(config.to_json()) == config


def test_from_env_blank_is_none_and_bad_is_error():
    assert TFConfig.from_env({}) is None
    assert TFConfig.from_env({"TF_CONFIG": "  "}) is None
    with pytest.raises(ConfigError, match="not valid JSON"):
        TFConfig.from_env({"TF_CONFIG": "{"})


def test_ipv6_and_non_loopback_addresses():
    config = TFConfig.from_dict({"cluster": {"worker": ["[::1]:2222", "10.0.0.5:2222", "localhost:3"]},
                                 "task": {"type": "worker", "index": 0}})
    assert config.non_loopback_addresses() == ["10.0.0.5:2222"]


def test_cluster_module_does_not_import_tensorflow():
    result = run_python("""
        import json, sys, tfdp
        from tfdp.cluster import TFConfig
        try:
            TFConfig.parse('{"cluster": {"worker": ["h"]}, "task": {"type": "worker", "index": 0}}')
        except tfdp.ConfigError as e:
            print("ERROR", e)
        print("TF", "tensorflow" in sys.modules)
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "has no port" in result.stdout
    assert "TF False" in result.stdout


# What a Google Cloud custom job (AI Platform Training, Vertex AI) puts in TF_CONFIG.
CLOUD = {"cluster": {"chief": ["cmle-training-master-0:2222"],
                     "worker": ["cmle-training-worker-0:2222", "cmle-training-worker-1:2222"]},
         "environment": "cloud", "job": {"scale_tier": "CUSTOM", "region": "us-central1", "args": ["--epochs=3"]},
         "task": {"type": "worker", "index": 1, "trial": "", "cloud": "q6a7b6e8e5d2f-ml"}}


def test_a_google_cloud_tf_config_is_accepted_and_its_keys_kept():
    config = TFConfig.from_dict(CLOUD)
    assert (config.num_workers, config.worker_rank, config.is_chief) == (3, 2, False)
    assert config.extra == {"environment": "cloud", "job": CLOUD["job"]}
    assert config.task_extra == {"trial": "", "cloud": "q6a7b6e8e5d2f-ml"}
    assert json.loads(config.to_json()) == CLOUD  # what TensorFlow reads, unchanged


def test_master_is_the_chief_s_old_name():
    old = {"cluster": {"master": ["h:1"], "worker": ["h:2"]}, "task": {"type": "master", "index": 0}}
    config = TFConfig.from_dict(old)
    assert config.cluster == {"chief": ("h:1",), "worker": ("h:2",)} and config.task_type == "chief"
    assert config.is_chief and config.num_workers == 2


def test_unknown_keys_that_are_no_typo_are_kept_as_tensorflow_keeps_them():
    config = TFConfig.parse(with_(my_platform={"x": 1}, task__attempt=2))
    assert config.extra == {"my_platform": {"x": 1}} and config.task_extra == {"attempt": 2}


SLURM = {"SLURM_JOB_NODELIST": "gpu[01-02],cpu7", "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_PROCID": "3"}

# SLURM's host list grammar, as `scontrol show hostnames` expands it.
HOSTLISTS = [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("node[01-02]-ib,gpu7", ["node01-ib", "node02-ib", "gpu7"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("rack[1-2]-n[01,03]-ib", ["rack1-n01-ib", "rack1-n03-ib", "rack2-n01-ib", "rack2-n03-ib"]),
    ("gpu[1,3],cpu[2-3],login", ["gpu1", "gpu3", "cpu2", "cpu3", "login"]),
    ("x-[5]", ["x-5"]),
]


@pytest.mark.parametrize("hostlist,hosts", HOSTLISTS)
def test_hostlists_expand_as_scontrol_show_hostnames(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist,message", [
    ("node[01-02", "a '[' is never closed"),
    ("node[]", "empty brackets"),
    ("a[1[2]]", "a bracket inside a bracket"),
    ("node]1", "a ']' without its '['"),
    ("a,,b", "an empty host name"),
    ("a,", "an empty host name"),
    ("n[3-1]", "runs backwards"),
    ("n[a-b]", "cannot read the range 'a-b'"),
    ("n[1-]", "cannot read the range '1-'"),
])
def test_malformed_hostlists_are_config_errors(hostlist, message):
    with pytest.raises(ConfigError) as raised:
        expand_hostlist(hostlist)
    assert message in str(raised.value) and "scontrol show hostnames" in str(raised.value)


def test_slurm_environment_becomes_tf_config():
    config = TFConfig.from_slurm(SLURM, port=20000)
    assert config.cluster == {"worker": ("gpu01:20000", "gpu01:20001", "gpu02:20000", "gpu02:20001", "cpu7:20000")}
    assert (config.task_type, config.task_index, config.num_workers) == ("worker", 3, 5)
    assert not config.is_chief and TFConfig.from_slurm({**SLURM, "SLURM_PROCID": "0"}).is_chief


def _allocation(distribution):
    """What srun sets for each task of 2 nodes x 2 tasks under `distribution` (as SLURM places them)."""
    place = {"block": [(0, 0), (0, 1), (1, 0), (1, 1)], "cyclic": [(0, 0), (1, 0), (0, 1), (1, 1)]}[distribution]
    nodes = ["node01-ib", "node02-ib"]
    return [{"SLURM_STEP_NODELIST": "node[01-02]-ib", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
             "SLURM_DISTRIBUTION": distribution, "SLURM_PROCID": str(rank), "SLURM_NODEID": str(node),
             "SLURMD_NODENAME": nodes[node], "SLURM_LOCALID": str(local)}
            for rank, (node, local) in enumerate(place)]


@pytest.mark.parametrize("distribution,addresses", [
    ("block", ["node01-ib:12345", "node01-ib:12346", "node02-ib:12345", "node02-ib:12346"]),
    ("cyclic", ["node01-ib:12345", "node02-ib:12345", "node01-ib:12346", "node02-ib:12346"]),
])
def test_every_task_of_a_two_node_allocation_gets_its_own_address(distribution, addresses):
    configs = [TFConfig.from_slurm(env) for env in _allocation(distribution)]
    for rank, config in enumerate(configs):
        assert config.cluster == {"worker": tuple(addresses)}  # the same cluster on every task
        assert config.task_index == rank
        env = _allocation(distribution)[rank]
        assert config.address == f"{env['SLURMD_NODENAME']}:{12345 + int(env['SLURM_LOCALID'])}"


def test_a_placement_that_disagrees_with_slurm_is_an_error_not_a_wrong_address():
    env = {**_allocation("cyclic")[1], "SLURM_DISTRIBUTION": "block"}  # told block, placed cyclic
    with pytest.raises(ConfigError) as raised:
        TFConfig.from_slurm(env)
    assert "SLURMD_NODENAME='node02-ib'" in str(raised.value) and "'node01-ib'" in str(raised.value)
    with pytest.raises(ConfigError, match="block, cyclic and plane"):
        TFConfig.from_slurm({**_allocation("block")[0], "SLURM_DISTRIBUTION": "arbitrary"})


def test_plane_distribution():
    env = {"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_PROCID": "2",
           "SLURM_DISTRIBUTION": "plane", "SLURM_DIST_PLANESIZE": "2"}
    assert TFConfig.from_slurm(env).cluster["worker"] == (
        "n1:12345", "n1:12346", "n2:12345", "n2:12346", "n1:12347", "n1:12348", "n2:12347", "n2:12348")


def test_slurm_step_variables_win_over_job_variables():
    step = {**SLURM, "SLURM_STEP_NODELIST": "cpu7", "SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_PROCID": "0"}
    assert TFConfig.from_slurm(step).cluster == {"worker": ("cpu7:12345",)}


@pytest.mark.parametrize("change,message", [
    ({"SLURM_PROCID": None}, "SLURM_PROCID is not set"),
    ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST is not set"),
    ({"SLURM_TASKS_PER_NODE": "2(x2)"}, "describes 2 node(s) but SLURM_JOB_NODELIST has 3"),
    ({"SLURM_TASKS_PER_NODE": "two"}, "cannot read 'two'"),
    ({"SLURM_JOB_NODELIST": "gpu[a-b]"}, "cannot read the range 'a-b'"),
    ({"SLURM_PROCID": "7"}, "SLURM_PROCID='7' is not a task of this step (5 tasks)"),
])
def test_bad_slurm_environment_names_the_variable(change, message):
    env = {k: v for k, v in {**SLURM, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as raised:
        TFConfig.from_slurm(env)
    assert message in str(raised.value)


def test_slurm_command_line_prints_tf_config_without_warnings():
    result = run_python("import runpy, sys; sys.argv = ['x', 'slurm', '--port', '3000']; "
                        "runpy.run_module('tfdp.cluster', run_name='__main__')", env=SLURM, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["task"] == {"type": "worker", "index": 3}
    assert json.loads(result.stdout)["cluster"]["worker"][3] == "gpu02:3001"


def test_python_dash_m_tfdp_cluster_prints_no_runtime_warning():
    command = [sys.executable, "-W", "error", "-m", "tfdp.cluster", "slurm"]
    result = subprocess.run(command, timeout=60, capture_output=True, text=True, env=_env(SLURM), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and json.loads(result.stdout)["task"]["index"] == 3


# A 3-pod Indexed Job "train" behind the headless Service "workers" in namespace "ml".
def _pod(index, **changes):
    env = {"JOB_COMPLETION_INDEX": str(index), "TFDP_K8S_WORKERS": "3", "TFDP_K8S_JOB": "train",
           "TFDP_K8S_SERVICE": "workers", "TFDP_K8S_NAMESPACE": "ml"}
    return {k: v for k, v in {**env, **changes}.items() if v is not None}


def test_every_pod_of_an_indexed_job_gets_the_same_cluster_and_its_own_index():
    addresses = ("train-0.workers.ml:12345", "train-1.workers.ml:12345", "train-2.workers.ml:12345")
    for index in range(3):
        config = TFConfig.from_kubernetes(_pod(index))
        assert config.cluster == {"worker": addresses} and config.task_index == index
        assert config.is_chief == (index == 0)
        assert TFConfig.from_env(_pod(index)) == config  # no TF_CONFIG: the pod's variables
    assert TFConfig.from_kubernetes(_pod(1, TFDP_K8S_NAMESPACE=None, TFDP_K8S_PORT="2222")).address == \
        "train-1.workers:2222"
    assert TFConfig.from_env({**_pod(0), "TF_CONFIG": json.dumps(GOOD)}).task_index == 1  # TF_CONFIG wins
    assert TFConfig.from_env({"JOB_COMPLETION_INDEX": "0"}) is None  # an Indexed Job tfdp was not told about


@pytest.mark.parametrize("change,message", [
    ({"TFDP_K8S_JOB": None}, "TFDP_K8S_JOB is not set"),
    ({"TFDP_K8S_SERVICE": None}, "TFDP_K8S_SERVICE is not set"),
    ({"JOB_COMPLETION_INDEX": "3"}, "JOB_COMPLETION_INDEX='3'"),
    ({"TFDP_K8S_WORKERS": "three"}, "TFDP_K8S_WORKERS='three'"),
    ({"TFDP_K8S_SERVICE": "Workers_1"}, "is not a Kubernetes name"),
    ({"TFDP_K8S_PORT": "80"}, "TFDP_K8S_PORT='80'"),
])
def test_bad_pod_variables_name_the_variable(change, message):
    with pytest.raises(ConfigError) as raised:
        TFConfig.from_kubernetes(_pod(0, **change))
    assert message in str(raised.value) and "docs/clusters.md" in str(raised.value)


def test_kubernetes_command_line_prints_tf_config():
    command = [sys.executable, "-m", "tfdp.cluster", "kubernetes"]
    result = subprocess.run(command, timeout=60, capture_output=True, text=True, env=_env(_pod(2)), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["task"] == {"type": "worker", "index": 2}
