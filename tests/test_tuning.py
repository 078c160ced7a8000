import json
import multiprocessing
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import apply_overrides
from dqn_cli.presets import resolve
from dqn_cli.runfiles import RunState, read_status
from dqn_cli.search_space import parse_space, shipped_spaces, space_for
from dqn_cli.tuning import TuneJob, _claim_trial, prepare, tune

TINY_FIXED = """
[fixed]
n_envs = 1
learning_starts = 100
eval_freq = 300
eval_episodes = 2
"""
TINY_PARAMS = """
[params.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true

[params.net_arch]
type = "categorical"
choices = [[8], [16]]
"""


def space_file(tmp_path: Path, fixed: str, pruner: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(f"{TINY_FIXED}{fixed}\n[pruner]\n{pruner}\n{TINY_PARAMS}")
    return path


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3"])
def test_shipped_spaces_sample_valid_hyperparameters_for_their_games(env_id: str):
    space = space_for(env_id)
    assert space.name == ("cartpole" if env_id == "CartPole-v1" else "default")
    _, preset = resolve(env_id)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        sampled = space.sample(study.ask())
        apply_overrides(preset, {**space.fixed, **sampled})
        assert sampled["net_arch"] in [list(c) for c in space.params[-1].choices]


def test_every_shipped_space_declares_parameters():
    assert {space.name for space in shipped_spaces()} == {"cartpole", "default"}
    assert all(space.params for space in shipped_spaces())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[params.learning_rate]\ntype = 'float'\nlow = 1e-2\nhigh = 1e-4", "low < high"),
        ("[params.lerning_rate]\ntype = 'float'\nlow = 1e-4\nhigh = 1e-2", "unknown hyperparameter"),
        ("[params.gamma]\ntype = 'categorical'\nchoices = [0.9, 2.0]", "gamma"),
        ("[params.batch_size]\ntype = 'float'\nlow = 16\nhigh = 64", 'type = "int"'),
        ("[params.tau]\ntype = 'uniform'", "needs type"),
        ("[params.tau]\ntype = 'float'\nlow = 0.5\nhigh = 1.0\nstep = 0", "step must be a number > 0"),
        ("[params.tau]\ntype = 'float'\nlow = 0.0\nhigh = 1.0\nlog = true", "log = true needs low > 0"),
        ("[fixed]\nn_timesteps = 1000", "declares no [params.NAME]"),
        ("[fixed]\nbatch_size = 8\n[params.batch_size]\ntype = 'int'\nlow = 8\nhigh = 64", "both fixed"),
        ("[pruner]\npatience = 3\n[params.tau]\ntype = 'float'\nlow = 0.5\nhigh = 1.0", "[pruner] takes"),
    ],
)
def test_bad_search_spaces_are_refused_with_one_line(text: str, message: str):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_space(text, "space.toml")


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study_and_record_each_trial_once(tmp_path: Path):
    space = space_file(tmp_path, "n_timesteps = 1800\nstop_at_eval_return = inf", "n_startup_trials = 6")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [sys.executable, "-m", "dqn_cli", "tune", "CartPole-v1", "--trials", "6", "--quiet"]
    command += ["--study", "shared", "--storage", storage, "--space", str(space), "--device", "cpu"]
    workers = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(trial.number for trial in trials) == list(range(6))  # each once, none lost
    assert {trial.state for trial in trials} == {TrialState.COMPLETE}
    statuses = [read_status(tmp_path / trial.user_attrs["run_dir"]) for trial in trials]
    assert all(status.state is RunState.FINISHED and status.step == 1800 for status in statuses)
    assert len({status.pid for status in statuses}) == 2, statuses  # both workers trained trials

    # A worker that stops first reports the best of the trials complete by then; asked again once all
    # are, `dqn tune` starts no trial and reports the best of them all.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "Study shared: 6 complete" in again.stdout
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == 6
    best = max(trials, key=lambda t: (t.value, -t.user_attrs["steps"]))
    assert f"Best: trial {best.number}," in again.stdout
    _, hp = resolve("CartPole-v1", tmp_path / "runs" / "tune" / "shared-best.toml")  # as `--config` reads it
    assert json.loads(json.dumps(hp.to_dict())) == best.user_attrs["hyperparameters"]


def test_a_trial_whose_evaluations_trail_the_completed_ones_is_pruned(tmp_path: Path):
    space = space_file(tmp_path, "n_timesteps = 900\nstop_at_eval_return = inf", "n_startup_trials = 1")
    job = prepare("CartPole-v1", 2, study="p", space_file=space, runs_root=tmp_path, device="cpu", quiet=True)
    (tmp_path / "tune").mkdir()
    study = optuna.create_study(study_name="p", storage=job.storage, direction="maximize")
    solved = {300: 500.0, 600: 500.0, 900: 500.0}
    study.add_trial(optuna.trial.create_trial(value=500.0, intermediate_values=solved))

    result = tune(job)
    pruned = study.trials[1]
    assert pruned.state == TrialState.PRUNED and list(pruned.intermediate_values) == [300]
    status = read_status(Path(pruned.user_attrs["run_dir"]))
    assert status is not None and status.state is RunState.PRUNED and status.step == 300
    assert result.counts == {"COMPLETE": 1, "PRUNED": 1}


def test_a_trial_stopped_at_the_threshold_holds_its_return_for_the_rest_of_its_budget(tmp_path: Path):
    space = space_file(tmp_path, "n_timesteps = 1200\nstop_at_eval_return = 0", "")
    job = prepare("CartPole-v1", 1, study="h", space_file=space, runs_root=tmp_path, device="cpu", quiet=True)
    result = tune(job)
    (trial,) = optuna.load_study(study_name="h", storage=job.storage).trials
    assert trial.user_attrs["steps"] == 300  # the first evaluation reached the threshold
    assert trial.intermediate_values == dict.fromkeys((300, 600, 900, 1200), trial.value)
    assert result.best is not None and result.best.number == 0 and result.best.steps == 300
    assert set(result.best.params) == {"learning_rate", "net_arch"}
    assert result.best.preset_file == tmp_path / "tune" / "h-best.toml"


@pytest.mark.slow
def test_jobs_runs_worker_processes_until_the_study_holds_the_trials_asked_for(tmp_path: Path):
    space = space_file(tmp_path, "n_timesteps = 600\nstop_at_eval_return = inf", "n_startup_trials = 4")
    command = [sys.executable, "-m", "dqn_cli", "tune", "CartPole-v1", "--trials", "4", "--jobs", "2"]
    result = subprocess.run(
        [*command, "--study", "j", "--space", str(space), "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    trial_lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert sorted(line.split(":")[0] for line in trial_lines) == [f"trial {n}" for n in range(4)]
    storage = f"sqlite:///{tmp_path / 'runs' / 'tune' / 'j.db'}"
    assert len(optuna.load_study(study_name="j", storage=storage).trials) == 4
    assert "Next: dqn train CartPole-v1 --config runs/tune/j-best.toml" in result.stdout


def claim_until_full(job: TuneJob) -> None:
    """A worker that only claims trials (and finishes them at once), to race the others hard."""
    study = optuna.load_study(study_name=job.study, storage=job.storage)
    while (trial := _claim_trial(study, job)) is not None:
        study.tell(trial, 0.0)


SERVER = os.environ.get("DQN_TEST_STORAGE_URL")  # e.g. postgresql+psycopg://user:password@127.0.0.1/db


@pytest.mark.slow
@pytest.mark.parametrize(
    "server",
    [
        pytest.param(False, id="sqlite"),
        pytest.param(
            True, id="server", marks=pytest.mark.skipif(not SERVER, reason="DQN_TEST_STORAGE_URL unset")
        ),
    ],
)
def test_racing_workers_never_make_more_trials_than_asked(tmp_path: Path, server: bool):
    storage = SERVER if server else f"sqlite:///{tmp_path / 'race.db'}"
    study = f"race-{uuid.uuid4().hex[:8]}"
    job = prepare(
        "CartPole-v1", 40, storage=storage, study=study, runs_root=tmp_path, device="cpu", quiet=True
    )
    optuna.create_study(study_name=study, storage=storage)
    workers = [
        multiprocessing.get_context("spawn").Process(target=claim_until_full, args=(job,)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 4
    trials = optuna.load_study(study_name=study, storage=storage).trials
    assert sorted(trial.number for trial in trials) == list(range(40))
