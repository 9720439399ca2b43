"""tfdp-launch with real processes: every test has a hard timeout and reaps what it started."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tfdp
from tests.models import dict_data, dict_model, train
from tests.workers import LAUNCH, ROOT, _env, _lines_with, launch, run_python
from tfdp.launch import parse_args

SHOW_ALL = {"TFDP_CONSOLE": "all"}  # these tests read every worker's output from the launcher's

# A worker without TensorFlow: says hello, then fails or sleeps as told.
TOY_WORKER = """
import json, os, signal, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
restart = int(os.environ["TFDP_RESTART_COUNT"])
print(f"hello {index} restart {restart} pid {os.getpid()} job {os.environ['TFDP_JOB_ID']}", flush=True)
mode = sys.argv[1]
if mode == "ignore-term" and index == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if index == 1 and (mode in ("fail", "ignore-term") or (mode == "fail-once" and restart == 0)):
    time.sleep(0.5)
    print("giving up", flush=True)
    sys.exit(3)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("argv,message", [
    (["--num_workers", "0", "--", "python", "x.py"], "--num_workers must be >= 1"),
    (["--", "python", "x.py"], "--num_workers is required"),
    (["--num_workers", "2"], "no worker command: put it after --"),
    (["--num_workers", "2", "--port", "65535", "--", "python"], "must lie in 1024..65535"),
    (["--num_workers", "2", "--port", "80", "--", "python"], "must lie in 1024..65535"),
    (["--num_workers", "2", "--max_restarts", "-1", "--", "python"], "--max_restarts must be >= 0"),
    (["--num_workers", "two", "--", "python"], "invalid int value: 'two'"),
])
def test_bad_arguments_are_clear_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_options_come_from_the_environment_too(monkeypatch):
    monkeypatch.setenv("TFDP_NUM_WORKERS", "3")
    monkeypatch.setenv("TFDP_MAX_RESTARTS", "2")
    args = parse_args(["--", "python", "train.py", "--epochs=1"])
    assert (args.num_workers, args.max_restarts, args.command) == (3, 2, ("python", "train.py", "--epochs=1"))


def test_the_old_timeout_flag_still_bounds_the_job_with_a_deprecation_warning(monkeypatch, capsys):
    with pytest.warns(DeprecationWarning, match="--job_timeout"):
        config = parse_args(["--num_workers", "1", "--timeout", "30", "--", "python"])
    assert config.job_timeout == 30 and "--timeout is deprecated; use --job_timeout" in capsys.readouterr().err
    monkeypatch.setenv("TFDP_TIMEOUT", "40")
    with pytest.warns(DeprecationWarning, match="TFDP_TIMEOUT"):
        assert parse_args(["--num_workers", "1", "--", "python"]).job_timeout == 40
    monkeypatch.setenv("TFDP_JOB_TIMEOUT", "50")  # the new name wins, and says nothing
    assert parse_args(["--num_workers", "1", "--", "python"]).job_timeout == 50


def test_the_config_is_frozen_and_lists_the_tasks_in_start_order():
    config = parse_args(["--num_workers", "2", "--num_ps", "1", "--", "python"])
    assert config.tasks == [("chief", 0), ("worker", 0), ("worker", 1), ("ps", 0)]
    with pytest.raises(AttributeError):
        config.num_workers = 3


def test_launcher_imports_no_tensorflow():
    code = "import sys, tfdp.launch; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True,
                            cwd=ROOT, env=_env(None))
    assert result.stdout.strip() == "False", result.stderr


def test_each_worker_gets_its_tf_config_and_a_prefixed_stream(tmp_path):
    result = launch(["--num_workers", "2", "--console", "all", "--log_dir", str(tmp_path), "--",
                        sys.executable, "-c", TOY_WORKER, "ok", "0"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[worker 0] hello 0 restart 0" in result.stdout and "[worker 1] hello 1 restart 0" in result.stdout
    assert "hello 1 restart 0" in (tmp_path / "worker-1.log").read_text()


@pytest.mark.parametrize("console, shown", [("chief", [0]), ("none", [])])
def test_console_shows_the_chief_by_default_and_log_dir_keeps_everything(tmp_path, console, shown):
    args = [] if console == "chief" else ["--console", console]
    result = launch(["--num_workers", "2", *args, "--log_dir", str(tmp_path), "--", sys.executable, "-c",
                        TOY_WORKER, "ok", "0"], timeout=60, env={"TFDP_CONSOLE": ""})  # the default
    assert result.returncode == 0, result.stderr
    assert [i for i in (0, 1) if f"[worker {i}] hello {i}" in result.stdout] == shown
    assert all(f"hello {i} restart 0" in (tmp_path / f"worker-{i}.log").read_text() for i in (0, 1))
    assert "tfdp-launch: exit code 0; worker 0 exit code 0, worker 1 exit code 0" in result.stderr  # closing line


def test_a_failed_worker_is_reported_even_when_the_console_hides_it():
    result = launch(["--num_workers", "2", "--grace_period", "1", "--", sys.executable, "-c", TOY_WORKER,
                        "fail", "30"], timeout=60, env={"TFDP_CONSOLE": ""})
    assert result.returncode == 3
    assert "[worker 1]" not in result.stdout
    assert "worker 1 failed first (exit code 3); its last output:" in result.stderr and "giving up" in result.stderr


def test_a_failing_worker_stops_the_job_fast_and_is_named():
    # Worker 0 would sleep 120 s and ignores SIGTERM: it is killed after the grace period.
    result = launch(["--num_workers", "2", "--grace_period", "1", "--", sys.executable, "-c",
                              TOY_WORKER, "ignore-term", "120"], timeout=90)
    assert result.returncode == 3
    assert "worker 1 failed first (exit code 3)" in result.stderr
    assert "giving up" in result.stderr  # the tail of its output
    assert result.seconds < 30  # seconds, not the 120 s worker 0 would take


def test_max_restarts_restarts_all_workers_with_the_same_job_id():
    result = launch(["--num_workers", "2", "--console", "all", "--max_restarts", "1", "--", sys.executable, "-c",
                        TOY_WORKER, "fail-once", "0"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "restarting all 2 workers (restart 1 of 1)" in result.stderr
    assert "[worker 1] hello 1 restart 1" in result.stdout
    job_ids = [line.rsplit(" job ", 1)[1] for line in result.stdout.splitlines() if "] hello " in line]
    assert len(job_ids) == 4 and len(set(job_ids)) == 1  # 2 workers x 2 attempts, one job id
    given = launch(["--num_workers", "1", "--", sys.executable, "-c", TOY_WORKER, "ok", "0"], timeout=60,
                      env={"TFDP_JOB_ID": "my-run"})
    assert "[worker 0] hello 0 restart 0" in given.stdout and given.stdout.rstrip().endswith("job my-run")


def test_timeout_stops_the_job():
    result = launch(["--num_workers", "2", "--job_timeout", "2", "--grace_period", "1", "--",
                              sys.executable, "-c", TOY_WORKER, "ok", "120"], timeout=60)
    assert result.returncode == 124 and "--job_timeout 2 s" in result.stderr
    assert result.seconds < 30


def _alive(pid):
    """Running (a zombie waiting to be reaped by whoever adopted it counts as ended)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_sigterm_to_the_launcher_leaves_no_process_behind():
    command = [*LAUNCH, "--num_workers", "2", "--grace_period", "1", "--", sys.executable, "-c", TOY_WORKER,
               "ignore-term", "120"]
    # Bounded below: a 30 s deadline for output, wait(timeout=30), SIGKILL of its group in finally.
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the 30 s deadline below, then SIGKILL
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(None),
                                start_new_session=True)
    pids = []
    try:
        # worker 0 (it ignores SIGTERM)
        pids = [int(line.split("pid")[1].split()[0]) for line in _lines_with(launcher.stdout, "hello 0", count=1)]
        assert pids, "worker 0 never started"
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=30)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode in (128 + signal.SIGTERM, 3)
    assert not _alive(pids[0])


def test_sigkill_of_the_launcher_kills_every_worker_within_5_seconds():
    """Workers run in their own sessions; the kernel's parent-death signal still ends them."""
    command = [*LAUNCH, "--num_workers", "2", "--", sys.executable, "-c", TOY_WORKER, "ignore-term", "120"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the 30 s deadline below, then SIGKILL
                                stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=_env(SHOW_ALL))
    pids = []
    try:
        pids = [int(line.split("pid")[1].split()[0]) for line in _lines_with(launcher.stdout, "hello", count=2)]
        assert len(pids) == 2, "the workers never started"
        launcher.kill()
        launcher.wait(timeout=30)
        gone_by = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < gone_by:
            time.sleep(0.1)
        left = [pid for pid in pids if _alive(pid)]
    finally:
        for pid in pids:  # reap by PID whatever happened
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived the launcher"


# A worker that listens as TensorFlow's gRPC server does: on every interface, at its TF_CONFIG port.
LISTENING_WORKER = """
import json, os, socket, time
config = json.loads(os.environ["TF_CONFIG"])
port = int(config["cluster"]["worker"][config["task"]["index"]].rsplit(":", 1)[1])
server = socket.socket()
server.bind(("0.0.0.0", port))
server.listen()
print(f"listening {port}", flush=True)
time.sleep(60)
"""


def _host_listeners() -> set[int]:
    """Ports with a TCP listener in THIS process's network namespace (the host's)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("network", ["isolated", "host"])
def test_a_running_job_listens_on_no_interface_of_the_host(network):
    command = [*LAUNCH, "--num_workers", "2", "--network", network, "--grace_period", "1", "--",
               sys.executable, "-c", LISTENING_WORKER]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the 30 s deadline below, then SIGKILL
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(SHOW_ALL), start_new_session=True)
    ports = []
    try:
        ports = [int(line.split("listening")[1]) for line in _lines_with(launcher.stdout, "listening", count=2)]
        assert len(ports) == 2, "the workers never listened"
        visible = [port for port in ports if port in _host_listeners()]
    finally:
        os.killpg(launcher.pid, signal.SIGTERM)
        try:
            launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    if network == "isolated":
        assert visible == []  # nothing outside the job can connect
    else:
        assert visible == ports and "--network host" in launcher.stderr.read()


@pytest.mark.parametrize("argv,env,message", [
    (["--num_workers", "2", "--", "no-such-program-xyz"], {}, "worker command 'no-such-program-xyz' not found"),
    (["--", sys.executable, "-c", "pass"], {"TFDP_NUM_WORKERS": "abc"}, "TFDP_NUM_WORKERS='abc' is not a whole number"),
    (["--num_workers", "2", "--log_dir", __file__, "--", sys.executable], {}, "is a file, not a directory"),
    (["--num_workers", "1", "--", sys.executable], {"TFDP_PIN": "yes"}, "TFDP_PIN='yes' is not one of auto, on, off"),
    (["--num_workers", "1", "--", sys.executable], {"TFDP_NETWORK": "none"}, "TFDP_NETWORK='none' is not one of"),
    (["--num_workers", "1", "--", sys.executable], {"TFDP_JOB_TIMEOUT": "nan"}, "TFDP_JOB_TIMEOUT='nan' is not a "
                                                                                 "finite number"),
], ids=["missing program", "bad env", "log_dir is a file", "bad env choice", "bad env network", "NaN timeout"])
def test_launcher_misuse_is_a_usage_error_naming_the_fix(argv, env, message):
    result = launch(argv, timeout=60, env=env)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_is_found_before_any_worker_starts():
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        result = launch(["--num_workers", "1", "--network", "host", "--port", str(port), "--",
                                  sys.executable, "-c", "print('started')"], timeout=60)
    assert result.returncode == 2 and f"port(s) {port} are in use" in result.stderr
    assert "started" not in result.stdout and result.seconds < 30


def test_closing_line_names_each_worker_restarts_and_wall_time():
    result = launch(["--num_workers", "2", "--max_restarts", "1", "--", sys.executable, "-c", TOY_WORKER,
                        "fail-once", "0"], timeout=120)
    assert result.returncode == 0
    closing = result.stderr.strip().splitlines()[-1]
    assert closing.startswith("tfdp-launch: exit code 0; worker 0 exit code 0, worker 1 exit code 0; "
                              "restarts used 1 of 1; wall time ")


PRIVATE_DIR_WORKER = """
import os, sys, tempfile, time
path = tempfile.mkdtemp(prefix="tfdp-worker-")
print("private", path, os.getpid(), flush=True)
time.sleep(float(sys.argv[1]))
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(condition, *, seconds: float, what: str) -> None:
    """Polls `condition` until it holds; fails naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)


def test_a_killed_jobs_private_dirs_are_removed_at_the_next_start(tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    command = [*LAUNCH, "--num_workers", "2", "--", sys.executable, "-c", PRIVATE_DIR_WORKER, "120"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the 30 s deadline below, then SIGKILL
                                stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=_env({**SHOW_ALL, **env}))
    said = []
    try:
        said = [line.split("private", 1)[1].split() for line in _lines_with(launcher.stdout, "private", count=2)]
    finally:
        launcher.kill()
        launcher.wait(timeout=30)
    paths = [path for path, _ in said]
    assert len(paths) == 2 and all(p.startswith(str(tmp_path / "tfdp-job-")) for p in paths)
    wait_until(lambda: all(_gone(int(pid)) for _, pid in said), seconds=30, what="the workers die with the launcher")
    assert all(os.path.isdir(p) for p in paths)  # their directories stay behind
    result = launch(["--num_workers", "1", "--", sys.executable, "-c", PRIVATE_DIR_WORKER, "0"], timeout=60,
                       env=env)
    assert result.returncode == 0
    assert not [p for p in tmp_path.rglob("tfdp-worker-*")]  # the stale ones and the new job's own


FIT_WORKER = """
import json, os, sys, keras, tfdp
from tests.models import dict_data, dict_model, train
strategy = tfdp.create_strategy()
backup = os.path.join(sys.argv[1], "backup")

def backed_up_epoch():
    try:
        with open(os.path.join(backup, "training_metadata.json")) as f:
            return json.load(f)["epoch"]
    except (OSError, ValueError, KeyError):
        return -1

class DieOnce(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        restart = int(os.environ["TFDP_RESTART_COUNT"])
        if epoch == 2 and restart == 0 and not tfdp.is_chief(strategy):
            import time
            deadline = time.monotonic() + 60
            while backed_up_epoch() < 2 and time.monotonic() < deadline:  # the chief's epoch-2 backup is written
                time.sleep(0.05)
            os._exit(7)

model, _ = train(strategy, dict_model, dict_data(45), epochs=3,
                 fit_kwargs=dict(callbacks=[keras.callbacks.BackupAndRestore(backup), DieOnce()]))
if tfdp.is_chief(strategy):
    with open(os.path.join(sys.argv[1], "weights.json"), "w") as f:
        json.dump([w.tolist() for w in model.get_weights()], f)
"""


def test_multi_worker_fit_restarts_from_its_backup_and_ends_like_an_uninterrupted_run(tmp_path):
    result = launch(["--num_workers", "2", "--max_restarts", "1", "--grace_period", "5", "--",
                        sys.executable, "-c", FIT_WORKER, str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worker 1 failed first (exit code 7)" in result.stderr
    reference, _ = train(tfdp.create_strategy("one_device", devices=["/cpu:0"]), dict_model,
                         dict_data(45), epochs=3)
    weights = json.loads((tmp_path / "weights.json").read_text())
    for got, want in zip(weights, reference.get_weights()):
        np.testing.assert_allclose(np.array(got), want, atol=1e-5, rtol=0)


PREEMPTED_FIT_WORKER = """
import json, os, signal, sys, time, keras, tfdp
from tests.models import dict_data, dict_model, train
strategy = tfdp.create_strategy()
marker = os.path.join(sys.argv[1], "preempted")

class PreemptOnce(keras.callbacks.Callback):  # what a scheduler does: SIGTERM to the job, mid-epoch
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1 and tfdp.is_chief(strategy) and not os.path.exists(marker):
            open(marker, "w").close()
            received, previous = [], signal.getsignal(signal.SIGTERM)

            def note(signum, frame):  # tfdp's handler, after noting that the launcher passed it on
                received.append(signum)
                previous(signum, frame)

            signal.signal(signal.SIGTERM, note)
            os.kill(os.getppid(), signal.SIGTERM)
            deadline = time.monotonic() + 60
            while not received and time.monotonic() < deadline:
                time.sleep(0.01)

model, _ = train(strategy, dict_model, dict_data(45), epochs=3, optimizer=lambda: keras.optimizers.Adam(0.01),
                 batch_size=12,  # 2 and 3 workers divide it
                 fit_kwargs=dict(callbacks=[keras.callbacks.BackupAndRestore(os.path.join(sys.argv[1], "backup")),
                                            PreemptOnce()]))
if tfdp.is_chief(strategy):
    with open(os.path.join(sys.argv[1], "weights.json"), "w") as f:
        json.dump([w.tolist() for w in model.get_weights()], f)
"""


def test_sigterm_during_multi_worker_fit_saves_a_backup_and_the_rerun_ends_like_an_uninterrupted_run(tmp_path):
    """The backup 2 workers saved on SIGTERM resumes on 3 workers and on 1 process (a job requeued in
    another shape); both end as an uninterrupted one-device run."""
    def args(workers, run_dir):
        return ["--num_workers", str(workers), "--grace_period", "60", "--", sys.executable, "-c",
                PREEMPTED_FIT_WORKER, str(run_dir)]

    first = launch(args(2, tmp_path), timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    assert "preempted (SIGTERM): saved epoch 1 step" in first.stdout
    assert "worker 0 exit code 75, worker 1 exit code 75" in first.stderr  # both saved and exited
    assert not (tmp_path / "weights.json").exists()
    one_process = tmp_path / "one_process"
    shutil.copytree(tmp_path / "backup", one_process / "backup")
    shutil.copy(tmp_path / "preempted", one_process)  # preempted once already: not again
    on_three = launch(args(3, tmp_path), timeout=300)
    assert on_three.returncode == 0, on_three.stderr[-3000:]
    assert "(written by 2 workers, 2 replicas; now 3 workers, 3 replicas)" in on_three.stdout
    on_one = run_python(PREEMPTED_FIT_WORKER, args=(str(one_process),), timeout=120)
    assert on_one.returncode == 0, on_one.stderr[-3000:]
    assert "(written by 2 workers, 2 replicas; now 1 worker, 1 replica)" in on_one.stdout
    reference, _ = train(tfdp.create_strategy("one_device", devices=["/cpu:0"]), dict_model, dict_data(45),
                         epochs=3, optimizer=lambda: keras.optimizers.Adam(0.01), batch_size=12)
    for run_dir in (tmp_path, one_process):
        weights = json.loads((run_dir / "weights.json").read_text())
        for got, want in zip(weights, reference.get_weights()):
            np.testing.assert_allclose(np.array(got), want, atol=1e-5, rtol=0)


STUCK_WORKER = """
import json, os, sys, time
import tensorflow as tf, tfdp
strategy = tfdp.create_strategy(timeout_seconds=float(sys.argv[1]))
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
start = time.monotonic()
try:
    for step in range(2):
        if index == 1 and step == 1:
            print("stuck", flush=True)
            time.sleep(600)  # alive, but never joins the next collective
        strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.constant(1.0))), axis=None)
except tf.errors.DeadlineExceededError:
    print(f"collective timed out after {time.monotonic() - start:.0f} s", flush=True)
    sys.exit(5)
"""


def test_a_stuck_worker_ends_the_job_through_the_collective_timeout():
    result = launch(["--num_workers", "2", "--grace_period", "2", "--", sys.executable, "-c",
                              STUCK_WORKER, "5"], timeout=120)
    assert result.returncode == 5
    assert "worker 0 failed first (exit code 5)" in result.stderr
    assert "collective timed out after" in result.stderr
    # Named, with where it sat: the line of STUCK_WORKER that sleeps.
    sleep_line = 1 + STUCK_WORKER.splitlines().index("            time.sleep(600)  # alive, but never joins the next collective")
    assert ("the cause is worker 1: it was still running, outside the collective its peers timed out in, at: "
            f'File "<string>", line {sleep_line} in <module>') in result.stderr, result.stderr[-3000:]
    assert result.seconds < 60  # not the 600 s the stuck worker would sit there


LOOPING_WORKER = """
import json, os, sys, time
import tensorflow as tf, tfdp
strategy = tfdp.create_strategy(timeout_seconds=5)
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
for step in range(10_000):
    strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.constant(1.0))), axis=None)
    if step == 3:
        print(f"step 3 pid {os.getpid()}", flush=True)
    time.sleep(0.01)
"""


def test_a_stopped_worker_is_named_as_the_cause():
    command = [*LAUNCH, "--num_workers", "2", "--console", "all", "--grace_period", "1", "--", sys.executable, "-c",
               LOOPING_WORKER]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the deadlines below, then SIGKILL
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(SHOW_ALL), start_new_session=True)
    stopped = None
    try:
        for line in _lines_with(launcher.stdout, "[worker 1] step 3", count=1, seconds=90):
            stopped = int(line.split("pid")[1].split()[0])
            os.kill(stopped, signal.SIGSTOP)
        assert stopped, "worker 1 never reached step 3"
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        if stopped and _alive(stopped):
            os.kill(stopped, signal.SIGKILL)
    assert launcher.returncode != 0
    assert "worker 0 failed first" in stderr and "the cause is worker 1: it was stopped" in stderr


def test_sigterm_stops_tensorflow_workers_at_once_not_after_the_grace_period():
    """TensorFlow's coordination service traps SIGTERM; tfdp gives it back its default action."""
    command = [*LAUNCH, "--num_workers", "2", "--console", "all", "--grace_period", "100", "--", sys.executable, "-c",
               LOOPING_WORKER]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the deadlines below, then SIGKILL
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(SHOW_ALL), start_new_session=True)
    try:
        assert _lines_with(launcher.stdout, "step 3", count=2, seconds=90), "the workers never reached step 3"
        signalled = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=120)
        seconds = time.monotonic() - signalled
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert "worker 0 killed by signal SIGTERM, worker 1 killed by signal SIGTERM" in stderr, stderr[-2000:]
    assert seconds < 30  # not the 100 s grace period


GPU_WORKER = """
import json, os
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
print(f"worker {index} sees {os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}", flush=True)
"""


@pytest.mark.parametrize("visible,argv,expected", [
    ("0,1,2,3", ["--gpus_per_worker", "2"], ["'0,1'", "'2,3'"]),
    ("4,5", [], ["'4'", "'5'"]),  # split evenly by default
    ("0,1", ["--gpus_per_worker", "0"], ["''", "''"]),  # CPU only
], ids=["two each", "automatic", "none"])
def test_each_worker_sees_its_own_gpus(visible, argv, expected):
    result = launch(["--num_workers", "2", *argv, "--", sys.executable, "-c", GPU_WORKER], timeout=60,
                       env={"CUDA_VISIBLE_DEVICES": visible})
    assert result.returncode == 0, result.stderr
    for index, gpus in enumerate(expected):
        assert f"worker {index} sees {gpus}" in result.stdout


def test_no_gpus_leaves_cuda_visible_devices_alone_and_too_many_is_a_usage_error():
    env = {"CUDA_VISIBLE_DEVICES": ""}
    result = launch(["--num_workers", "2", "--", sys.executable, "-c", GPU_WORKER], timeout=60, env=env)
    assert result.returncode == 0 and "worker 1 sees ''" in result.stdout
    result = launch(["--num_workers", "2", "--gpus_per_worker", "1", "--", sys.executable, "-c", GPU_WORKER],
                       timeout=60, env=env)
    assert result.returncode == 2 and "--gpus_per_worker 1: 2 workers x 1 GPUs need 2 and 0 are visible" in result.stderr


AFFINITY_WORKER = """
import json, os
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
print(f"worker {index} cores {sorted(os.sched_getaffinity(0))} threads {os.environ['TF_NUM_INTRAOP_THREADS']}",
      flush=True)
"""


def test_workers_are_pinned_to_their_own_cores_when_they_fit():
    cores = sorted(os.sched_getaffinity(0))
    result = launch(["--num_workers", "2", "--threads_per_worker", "1", "--pin", "auto", "--",
                        sys.executable, "-c", AFFINITY_WORKER], timeout=60)
    assert result.returncode == 0, result.stderr
    if len(cores) >= 2:
        assert f"worker 0 cores [{cores[0]}] threads 1" in result.stdout
        assert f"worker 1 cores [{cores[1]}] threads 1" in result.stdout
    unpinned = launch(["--num_workers", "2", "--threads_per_worker", "1", "--",  # default: off
                          sys.executable, "-c", AFFINITY_WORKER], timeout=60)
    assert f"worker 1 cores {cores} threads 1" in unpinned.stdout


def test_pin_on_with_too_many_threads_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--num_workers", "2", "--threads_per_worker", str(len(os.sched_getaffinity(0))),
                    "--pin", "on", "--", "python"])
    assert "--pin on: 2 workers x" in capsys.readouterr().err


def test_fixed_ports_are_the_ones_in_tf_config():
    from tfdp.launch import free_ports

    base = free_ports(1)[0]
    if base > 65000:
        base = 40000
    code = "import json, os; print('addresses', json.loads(os.environ['TF_CONFIG'])['cluster']['worker'])"
    result = launch(["--num_workers", "2", "--port", str(base), "--", sys.executable, "-c", code], timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"addresses ['127.0.0.1:{base}', '127.0.0.1:{base + 1}']" in result.stdout
