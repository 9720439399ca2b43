"""The default recipe, end to end, as README.md's first command runs it."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.workers import ROOT, _env, _lines_with

RECIPE = [sys.executable, "-m", "recipes.image_classification"]


def run(args, *, timeout=240):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env(None))


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_default_recipe_on_two_cpu_replicas_reaches_95_percent(tmp_path, loop):
    result = run([*RECIPE, "--strategy=mirrored", "--num_cpu_replicas=2", f"--data_dir={tmp_path / 'data'}",
                  f"--model_dir={tmp_path / 'run'}", f"--loop={loop}"])
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval"]["accuracy"] >= 0.95
    assert results["config"]["replicas"] == 2 and results["examples_per_sec"] > 0
    assert set(results["train"]) >= {"loss", "accuracy"}
    assert [h["epoch"] for h in results["history"]] == list(range(1, 11))  # the default 10 epochs
    assert all(0 <= h["val_accuracy"] <= 1 for h in results["history"])
    reached = results["time_to_accuracy"]
    assert reached["target"] == 0.95 and 0 < reached["seconds"] <= results["history"][-1]["seconds"]
    assert 0 < results["time_to_first_step_seconds"] < results["history"][0]["seconds"] < results["wall_seconds"]
    assert 0 < results["train_seconds"] < results["wall_seconds"]
    assert results["train_examples_this_run"] == 10 * results["config"]["train_examples"]
    assert results["examples_per_sec"] == pytest.approx(results["train_examples_this_run"] / results["train_seconds"])
    assert "examples_per_sec" not in results["train"]  # one examples/s, defined in the file
    assert results["versions"]["keras"] and results["versions"]["tfdp"]
    logs = tmp_path / "run" / ("logs" if loop == "fit" else "")
    for run_name in ("train", "validation"):  # TensorBoard: training and evaluation curves
        assert any("events" in p.name for p in (logs / run_name).iterdir())


# Epochs enough for the accuracy asserted (the default 10 run in-process above).
LAUNCHED_EPOCHS = 6


@pytest.mark.parametrize("loop,extra", [("fit", []), ("custom", []), ("custom", ["--local_steps=8"])],
                         ids=["fit", "custom", "custom-local_steps-8"])
def test_recipe_under_tfdp_launch_with_two_workers(tmp_path, loop, extra):
    result = run([sys.executable, "-m", "tfdp.launch", "--num_workers", "2", "--job_timeout", "240", "--",
                  *RECIPE, "--strategy=multi_worker", f"--data_dir={tmp_path / 'data'}",
                  f"--model_dir={tmp_path / 'run'}", f"--loop={loop}", f"--epochs={LAUNCHED_EPOCHS}", *extra],
                 timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval"]["accuracy"] >= 0.95
    assert results["config"]["local_steps"] == (8 if extra else 1) and len(results["history"]) == LAUNCHED_EPOCHS
    assert "[worker 0] eval accuracy" in result.stdout and "[worker 1] eval accuracy" not in result.stdout


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
    result = run([*RECIPE, "--strategy=mirrored", "--num_cpu_replicas=2", "--dry_run",
                  f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'run'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout[result.stdout.index("{"):])
    assert plan["replicas"] == 2 and plan["global_batch_size"] == 64 and plan["per_replica_batch_size"] == 32
    assert plan["loop"] == "fit" and plan["workers"] == 1
    assert not (tmp_path / "run").exists()


def test_dry_run_records_the_local_step_flags(tmp_path):
    result = run([*RECIPE, "--strategy=mirrored", "--num_cpu_replicas=2", "--dry_run", "--loop=custom",
                  "--local_steps=4", "--outer_learning_rate=0.7", "--outer_momentum=0.5", "--target_accuracy=0.9",
                  f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'run'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout[result.stdout.index("{"):])
    assert (plan["local_steps"], plan["outer_learning_rate"], plan["outer_momentum"]) == (4, 0.7, 0.5)
    assert plan["target_accuracy"] == 0.9


def test_startup_timeout_bounds_waiting_for_a_worker_that_never_comes(tmp_path):
    from tfdp.cluster import TFConfig
    from tfdp.launch import free_ports
    env = {"TF_CONFIG": TFConfig.local_workers(free_ports(2), 0).to_json()}  # worker 1 never starts
    result = subprocess.run([*RECIPE, "--startup_timeout=5", f"--model_dir={tmp_path}"], timeout=120,
                            capture_output=True, text=True, cwd=ROOT, env=_env(env))
    assert result.returncode != 0
    assert "did not form within 5 s" in result.stderr and "worker 1 (127.0.0.1:" in result.stderr


# Runs the recipe with `args`, then says whether TensorFlow was ever imported.
WITHOUT_TF = ("import atexit, runpy, sys; atexit.register(lambda: print('TF imported:', 'tensorflow' in sys.modules)); "
              "sys.argv = ['image_classification', *sys.argv[1:]]; "
              "runpy.run_module('recipes.image_classification', run_name='__main__')")


def test_help_lists_every_recipe_flag_without_starting_tensorflow():
    result = run([sys.executable, "-c", WITHOUT_TF, "--help"])
    listed = {line.split(":")[0].strip().replace("[no]", "") for line in result.stdout.splitlines()
              if line.startswith("  --")}
    assert {"--strategy", "--num_cpu_replicas", "--loop", "--local_steps", "--global_batch_size", "--epochs",
            "--dataset", "--model_dir", "--startup_timeout"} <= listed
    assert "TF imported: False" in result.stdout


def test_a_malformed_tf_config_is_reported_before_tensorflow_starts(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TF, "--dry_run", f"--model_dir={tmp_path}"], timeout=120,
                            capture_output=True, text=True, cwd=ROOT, env=_env({"TF_CONFIG": "{"}))
    assert result.returncode != 0
    assert "TF_CONFIG is not valid JSON" in result.stderr and "Traceback" not in result.stderr
    assert "TF imported: False" in result.stdout


@pytest.mark.parametrize("flags,message", [
    (["--strategy=mirored"], 'value should be one of <auto|default|one_device|mirrored|multi_worker|'
                              'parameter_server>. Did you mean "mirrored"?'),
    (["--strategy=parameter_server"], "--strategy=parameter_server needs --loop=custom"),
    (["--max_staleness=2"], "--max_staleness bounds asynchronous updates: it needs --strategy=parameter_server"),
    (["--loop=keras"], "--loop"),
    (["--strategy=mirrored", "--num_cpu_replicas=2", "--global_batch_size=63"],
     "--global_batch_size: global_batch_size=63 does not divide by the 2 replicas"),
    (["--gradient_accumulation_steps=0"], "--gradient_accumulation_steps"),
    (["--dataset=mnist"], "--dataset=mnist: not prepared under --data_dir"),
    (["--local_steps=4"], "--local_steps > 1 needs --loop=custom"),
    (["--loop=custom", "--outer_learning_rate=0.7"], "give --local_steps > 1 too"),
])
def test_bad_flags_are_clear_errors(tmp_path, flags, message):
    result = run([*RECIPE, *flags, "--dry_run", f"--data_dir={tmp_path}"])
    assert result.returncode != 0
    assert message in result.stderr


def test_two_runs_of_the_same_command_both_train_in_their_own_model_dir(tmp_path):
    command = [*RECIPE, "--strategy=mirrored", "--num_cpu_replicas=2", "--epochs=1", f"--data_dir={tmp_path / 'data'}"]
    env = _env({"TFDP_RUNS_DIR": str(tmp_path / "runs")})
    dirs = []
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        model_dir = next(line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("model_dir "))
        results = json.loads((tmp_path / "runs" / model_dir / "results.json").read_text())
        assert results["train"]["loss"] > 0 and results["train_examples_this_run"] > 0
        dirs.append(model_dir)
    assert dirs[0] != dirs[1] and all(d.startswith(str(tmp_path / "runs")) for d in dirs)


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_a_finished_model_dir_is_left_as_it_is(tmp_path, loop):
    command = [*RECIPE, "--epochs=1", f"--loop={loop}", f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path}"]
    assert run(command).returncode == 0
    before = (tmp_path / "results.json").read_text()
    again = run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"model_dir {tmp_path} holds a finished run (results.json); nothing to train" in again.stdout
    assert "Epoch" not in again.stdout and (tmp_path / "results.json").read_text() == before


def test_a_preempted_fit_resumes_and_says_where(tmp_path):
    command = [*RECIPE, "--epochs=3", f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'run'}"]
    recipe = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the deadlines below, then SIGKILL
                              stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=_env(None), start_new_session=True)
    try:
        assert _lines_with(recipe.stdout, "Epoch 1/3", count=1, seconds=120), "the recipe never started training"
        recipe.send_signal(signal.SIGTERM)  # during the first step (its tracing takes seconds)
        output, _ = recipe.communicate(timeout=120)
    finally:
        if recipe.poll() is None:
            os.killpg(recipe.pid, signal.SIGKILL)
            recipe.wait()
    assert recipe.returncode == 75 and "preempted (SIGTERM): saved epoch 0 step" in output
    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {tmp_path / 'run' / 'backup' / 'latest.weights.h5'} at epoch 0 step" in resumed.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3] and results["train"]["loss"] > 0


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_synthetic_data_with_linear_scaling_and_warmup(tmp_path, loop):
    result = run([*RECIPE, "--dataset=synthetic", "--epochs=1", "--global_batch_size=128", "--lr_scaling=linear",
                  "--warmup_epochs=0.5", f"--loop={loop}", f"--model_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["learning_rate"] == pytest.approx(0.003 * 128 / 64)
    assert results["config"]["train_examples"] == 4096 and results["eval"]["loss"] > 0


def test_startup_latency_script_prints_seconds_and_which_commands_start_tensorflow():
    result = run([sys.executable, "-m", "recipes.startup_latency", "--repeats", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:40].strip(): line[40:].split() for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"recipe --help", "recipe, bad --strategy", "recipe, malformed TF_CONFIG",
                         "create_strategy, malformed TF_CONFIG", "tfdp env"}
    assert all(float(seconds) > 0 for seconds, _ in rows.values())
    assert [imported for _, imported in rows.values()] == ["no", "no", "no", "no", "yes"]
