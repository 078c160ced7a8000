"""Envs from third-party packages: `--gym-packages MODULE` and gymnasium's `module:EnvId-v0` ids, with a
tiny package written by each test. A run that needs a package is played or resumed only when the user
names the package again, since importing runs its code."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import gymnasium as gym
import pytest
from helpers import assert_one_line_error, dqn

from dqn_cli.envpackages import EnvSource, env_source, import_packages, require_named
from dqn_cli.errors import UserError
from dqn_cli.evaluation import load_trained
from dqn_cli.presets import resolve
from dqn_cli.runfiles import CONFIG_FILE, read_config
from dqn_cli.training import resume, train

PACKAGE = "mygym"
ENV_ID = "Countdown-v0"
# The env of the package: every episode lasts `episode_steps` steps of reward 1, whatever the policy, so its
# return shows which value of the env kwarg the env that played it was made with.
PACKAGE_SOURCE = """
import gymnasium as gym
import numpy as np


class Countdown(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None, episode_steps=10):
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode, self.episode_steps, self.t = render_mode, episode_steps, 0

    def _obs(self):
        return np.array([self.t / self.episode_steps, 1.0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= self.episode_steps, False, {}

    def render(self):
        return np.full((16, 16, 3), 40 * (self.t % 6), np.uint8)


gym.register("Countdown-v0", entry_point="mygym:Countdown", max_episode_steps=100)
"""
TINY = ["n_timesteps=200", "learning_starts=50", "eval_freq=100", "eval_episodes=2", "net_arch=[8]"]
TINY_OPTIONS = [option for item in TINY for option in ("--set", item)]


@pytest.fixture
def package_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the package (and one that fails to import), on this process's import path; the
    modules and the ids they register are forgotten afterwards."""
    folder = tmp_path / "packages"
    folder.mkdir()
    (folder / f"{PACKAGE}.py").write_text(PACKAGE_SOURCE)
    (folder / "broken.py").write_text("raise RuntimeError('this package is broken')\n")
    monkeypatch.syspath_prepend(str(folder))
    registered = set(gym.registry)
    yield folder
    for name in (PACKAGE, "broken"):
        sys.modules.pop(name, None)
    for env_id in set(gym.registry) - registered:
        del gym.registry[env_id]


def with_path(folder: Path) -> dict[str, str]:
    """The environment for a `dqn` subprocess that can import the package."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def test_module_prefixed_ids_split_into_id_and_module():
    assert env_source("mygym:Countdown-v0") == EnvSource("Countdown-v0", ("mygym",))
    assert env_source("mygym:Countdown-v0", ["other", "mygym"]).packages == ("other", "mygym")
    assert env_source("ALE/Pong-v5", ["a.b"]) == EnvSource("ALE/Pong-v5", ("a.b",))
    for bad, message in [
        ("mygym:", "names a module but no id"),
        ("my gym:X-v0", "module name"),
        (":X-v0", "module name"),
    ]:
        with pytest.raises(UserError, match=message):
            env_source(bad)
    with pytest.raises(UserError, match="--gym-packages takes a module name"):
        env_source("CartPole-v1", ["../evil"])


def test_packages_that_cannot_be_imported_are_one_line(package_dir: Path):
    with pytest.raises(UserError, match=r"^no module named 'nosuchgym'; --gym-packages imports"):
        import_packages(["nosuchgym"])
    with pytest.raises(UserError, match=r"importing 'broken' \(--gym-packages\) failed: RuntimeError: this"):
        import_packages(["broken"])
    import_packages([PACKAGE])
    assert ENV_ID in gym.registry


def test_only_packages_named_on_the_command_line_are_allowed():
    require_named(["mygym"], ["other", "mygym"])
    with pytest.raises(UserError) as refused:
        require_named(["mygym", "b"], ["b"])
    assert str(refused.value) == (
        "this run's env comes from package 'mygym'; pass --gym-packages mygym to import it "
        "(importing runs its code)"
    )


@pytest.mark.slow
def test_train_eval_record_with_gym_packages_and_env_kwargs(package_dir: Path, tmp_path: Path):
    env = with_path(package_dir)
    trained = dqn(
        "train", ENV_ID, "--gym-packages", PACKAGE, "--env-kwargs", "episode_steps=7", "--quiet",
        *TINY_OPTIONS, "--run-dir", "run", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    config = tomllib.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    assert (config["env_id"], config["gym_packages"]) == (ENV_ID, [PACKAGE])
    assert config["hyperparameters"]["env_kwargs"] == {"episode_steps": 7}

    for command in (["eval", "run"], ["record", "run", "--out", "a.gif"]):
        refused = dqn(*command, cwd=tmp_path, env=env)
        assert_one_line_error(refused, "comes from package 'mygym'; pass --gym-packages mygym to import it")
    played = dqn("eval", "run", "--episodes", "3", "--json", "--gym-packages", PACKAGE, cwd=tmp_path, env=env)
    assert played.returncode == 0, played.stderr
    assert json.loads(played.stdout)["returns"] == [7.0, 7.0, 7.0]  # the saved env kwarg made the env
    overridden = dqn(
        "eval", "run", "--episodes", "2", "--json", "--gym-packages", PACKAGE,
        "--env-kwargs", "episode_steps=4", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert json.loads(overridden.stdout)["returns"] == [4.0, 4.0]
    filmed = dqn("record", "run", "--out", "a.gif", "--gym-packages", PACKAGE, cwd=tmp_path, env=env)
    assert filmed.returncode == 0, filmed.stderr
    assert "8 frames, returns 7.0" in filmed.stderr  # the reset frame and 7 steps
    assert (tmp_path / "run" / "videos" / "a.gif").stat().st_size > 0


@pytest.mark.slow
def test_a_module_prefixed_id_trains_under_its_plain_id_and_records_the_module(
    package_dir: Path, tmp_path: Path
):
    env = with_path(package_dir)
    trained = dqn("train", f"{PACKAGE}:{ENV_ID}", *TINY_OPTIONS, cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr
    assert f"dqn eval runs/{ENV_ID}/" in trained.stdout and "--gym-packages mygym" in trained.stdout
    (run,) = (tmp_path / "runs" / ENV_ID).iterdir()
    config = read_config(run)
    assert (config["env_id"], config["gym_packages"]) == (ENV_ID, [PACKAGE])
    assert_one_line_error(dqn("eval", str(run), cwd=tmp_path, env=env), "pass --gym-packages mygym")
    played = dqn(
        "eval", str(run), "--episodes", "1", "--json", "--gym-packages", PACKAGE, cwd=tmp_path, env=env
    )
    assert json.loads(played.stdout)["returns"] == [10.0]  # the env's default episode_steps


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--gym-packages", "nosuchgym"], ["no module named 'nosuchgym'; --gym-packages imports"]),
        (["--gym-packages", "broken"], ["importing 'broken'", "RuntimeError: this package is broken"]),
        (["--gym-packages", PACKAGE, "--env-kwargs", "speed=2"], ["Countdown-v0 takes no env kwarg 'speed'"]),
    ],
)
def test_bad_packages_and_kwargs_are_one_line_and_write_nothing(
    package_dir: Path, tmp_path: Path, args, fragments
):
    result = dqn("train", ENV_ID, *args, cwd=tmp_path, env=with_path(package_dir))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "runs").exists()


def test_an_unknown_id_after_the_import_is_the_usual_error(package_dir: Path):
    import_packages([PACKAGE])
    with pytest.raises(UserError, match=r"^unknown environment id 'Countdwn-v0'; did you mean Countdown-v0"):
        train("Countdwn-v0", resolve("Countdwn-v0", sets=TINY)[1], gym_packages=[PACKAGE], device="cpu")


def test_a_run_resumes_and_plays_only_when_its_packages_are_named(package_dir: Path, tmp_path: Path):
    preset, hp = resolve(ENV_ID, sets=TINY, env_kwargs=["episode_steps=3"])
    train(
        ENV_ID, hp, preset=preset, run_dir=tmp_path / "run", device="cpu", quiet=True, gym_packages=[PACKAGE]
    )
    with pytest.raises(UserError, match="pass --gym-packages mygym"):
        resume(tmp_path / "run", steps=300, device="cpu", quiet=True)
    with pytest.raises(UserError, match="pass --gym-packages mygym"):
        load_trained(tmp_path / "run", device="cpu")
    result, _ = resume(tmp_path / "run", steps=300, device="cpu", quiet=True, gym_packages=[PACKAGE])
    assert result.steps == 300
    trained = load_trained(tmp_path / "run", device="cpu", gym_packages=[PACKAGE])
    assert trained.score(2, seed=0) == [3.0, 3.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gym_packages": ["evil"]}, "comes from package 'evil'; pass --gym-packages evil"),
        ({"env_id": "evil:CartPole-v1"}, "comes from package 'evil'; pass --gym-packages evil"),
        ({"gym_packages": "evil"}, "gym_packages in .* must be a list of module names"),
        ({"gym_packages": ["os; rm"]}, "gym_packages in .* takes a module name"),
    ],
)
def test_an_edited_model_description_never_imports_a_module(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, message
):
    """model.json may come from anyone: a package it names is imported only when named again."""
    evil = tmp_path / "packages"
    evil.mkdir()
    (evil / "evil.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(evil))
    model = tmp_path / "model.safetensors"
    model.write_bytes((tiny_run / "model.safetensors").read_bytes())
    meta = json.loads((tiny_run / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(UserError, match=message):
        load_trained(model, device="cpu")
    assert not (tmp_path / "imported").exists()
    assert "evil" not in sys.modules


def test_an_edited_config_names_packages_that_must_be_module_names(tiny_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    text = (tiny_run / CONFIG_FILE).read_text().replace("gym_packages = []", 'gym_packages = ["a", 3]')
    (run / CONFIG_FILE).write_text(text)
    with pytest.raises(UserError, match=r"gym_packages in .*config.toml takes a module name .*, got 3"):
        read_config(run)


@pytest.mark.slow
def test_bench_workers_import_the_packages(package_dir: Path, tmp_path: Path):
    """Two worker processes (spawned: they start with none of this process's imports) train the env."""
    from dqn_cli.bench import run_bench

    bench = run_bench(
        [f"{PACKAGE}:{ENV_ID}"], seeds=2, jobs=2, name="b", device="cpu", runs_root=tmp_path / "runs",
        sets=TINY, env_kwargs=["episode_steps=5"],
    )  # fmt: skip
    rows = json.loads((bench / "results.json").read_text())
    assert [(row["env_id"], row["best_model_return"]) for row in rows] == [(ENV_ID, 5.0), (ENV_ID, 5.0)]
    assert read_config(bench / f"{ENV_ID}-s1")["gym_packages"] == [PACKAGE]


@pytest.mark.slow
def test_tune_workers_import_the_packages(package_dir: Path, tmp_path: Path):
    """Two worker processes (spawned) train the trials."""
    from dqn_cli.tuning import prepare, tune

    space = tmp_path / "space.toml"
    fixed = "\n".join(TINY).replace("[8]", "[8]\nstop_at_eval_return = inf")
    space.write_text(
        f"[fixed]\n{fixed}\n[pruner]\nn_startup_trials = 5\n"
        '[params.learning_rate]\ntype = "float"\nlow = 1e-4\nhigh = 1e-3\n'
    )
    job = prepare(
        f"{PACKAGE}:{ENV_ID}", 2, space_file=space, runs_root=tmp_path / "runs", device="cpu", quiet=True,
        env_kwargs=["episode_steps=6"],
    )  # fmt: skip
    result = tune(job, jobs=2)
    assert result.counts == {"COMPLETE": 2} and result.best is not None and result.best.value == 6.0
    assert f"dqn train {ENV_ID} --config" in result.best.preset_file.read_text()
    assert "--gym-packages mygym" in result.best.preset_file.read_text()
