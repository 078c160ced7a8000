import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dqn_cli.errors import UserError
from dqn_cli.evaluation import load_trained
from dqn_cli.runfiles import (
    RunState,
    RunStatus,
    create_run_dir,
    is_run_dir,
    iter_runs,
    newest_run,
    read_config,
    read_status,
    resolve_model_path,
    write_status,
)


def test_run_folder_holds_config_metrics_events_and_models(tiny_run: Path):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.toml",
        "metrics.csv",
        "model.safetensors",
        "model.json",
        "best.safetensors",
        "best.json",
    } <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    assert not any(name.endswith((".pt", ".pkl", ".tmp")) for name in names)
    config = read_config(tiny_run)
    assert config["env_id"] == "CartPole-v1" and config["seed"] == 3
    assert config["hyperparameters"]["n_timesteps"] == 600
    header, *rows = (tiny_run / "metrics.csv").read_text().splitlines()
    assert header == "step,wall_time,episode_return,episode_length,loss,epsilon,eval_return"
    assert any(row.split(",")[6] for row in rows)  # evaluation rows
    assert any(row.split(",")[2] for row in rows)  # episode rows


def test_model_metadata_describes_env_network_and_versions(tiny_run: Path):
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["env_id"] == "CartPole-v1"
    assert meta["observation_space"] == {"shape": [4], "dtype": "float32"}
    assert meta["action_space"] == {"n": 2}
    assert meta["network"] == {
        "kind": "mlp",
        "obs_shape": [4],
        "n_actions": 2,
        "net_arch": [16],
        "dueling": False,
    }
    assert meta["preset"] == "CartPole-v1" and meta["step"] == 600
    assert {"dqn_cli", "torch", "gymnasium", "numpy"} <= set(meta["versions"])


def test_save_load_round_trip_gives_identical_q_values(tiny_run: Path, tmp_path: Path):
    from safetensors.torch import load_file

    from dqn_cli.networks import build_q_network
    from dqn_cli.runfiles import save_model

    original = load_trained(tiny_run, final=True, device="cpu")
    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
    save_model(
        tmp_path,
        "copy",
        original.q_network.state_dict(),
        {"env_id": "CartPole-v1", "network": original.meta["network"], "action_space": {"n": 2}},
    )
    reloaded = load_trained(tmp_path / "copy.safetensors", device="cpu")
    assert torch.equal(original.q_network(obs), reloaded.q_network(obs))
    # and the weights on disk are exactly those of the network that was saved
    raw = build_q_network(original.meta["network"])
    raw.load_state_dict(load_file(tiny_run / "model.safetensors"))
    assert torch.equal(raw(obs), original.q_network(obs))


def test_run_folder_defaults_to_best_model_and_final_on_request(tiny_run: Path):
    assert resolve_model_path(tiny_run).name == "best.safetensors"
    assert resolve_model_path(tiny_run, final=True).name == "model.safetensors"


def make_run(run: Path, started: int, model: bool = True) -> Path:
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    if model:
        (run / "model.safetensors").write_bytes(b"")
    os.utime(run / "config.toml", (started, started))
    return run


def test_newest_run_is_the_latest_started(tmp_path: Path):
    make_run(tmp_path / "CartPole-v1" / "a", 1000)
    make_run(tmp_path / "CartPole-v1" / "b", 1001)
    assert newest_run(tmp_path).name == "b"
    with pytest.raises(UserError, match="no run with a model"):
        newest_run(tmp_path / "empty")


def test_newest_run_finds_a_bench_run_nested_a_level_deeper(tmp_path: Path):
    make_run(tmp_path / "CartPole-v1" / "20261125-050000-s0", 1000)
    bench = make_run(tmp_path / "bench" / "20261125-060000" / "CartPole-v1-s1", 2000)
    make_run(tmp_path / "CartPole-v1" / "20261125-070000-s0", 3000, model=False)  # newer, but no model
    assert newest_run(tmp_path) == bench


def test_iter_runs_finds_runs_at_any_depth_but_not_inside_a_run(tmp_path: Path):
    plain = make_run(tmp_path / "CartPole-v1" / "20261125-050000-s0", 1)
    (plain / "videos" / "old").mkdir(parents=True)
    (plain / "videos" / "old" / "config.toml").write_text("")  # part of the run, not a run of its own
    bench = tmp_path / "bench" / "20261125-060000"
    seeds = [make_run(bench / f"CartPole-v1-s{seed}", 1) for seed in (1, 2)]
    (bench / "results.md").write_text("")
    deep = make_run(tmp_path / "a" / "b" / "c" / "run", 1)
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "study.db").write_bytes(b"")
    (tmp_path / "odd" / "config.toml").mkdir(parents=True)  # a folder named config.toml is no run
    assert list(iter_runs(tmp_path)) == [plain, deep, *seeds]  # in path order: "C" < "a" < "b"
    assert is_run_dir(plain) and not is_run_dir(bench) and not is_run_dir(tmp_path / "odd")
    assert list(iter_runs(tmp_path / "missing")) == []


def test_status_round_trips_with_the_writers_pid_and_time(tmp_path: Path):
    written = RunStatus(RunState.PRUNED, step=300, planned_steps=900, updates=200, wall_time=4.5)
    written.best_eval = 9.0
    write_status(tmp_path, written)
    raw = json.loads((tmp_path / "status.json").read_text())
    assert raw["state"] == "pruned" and raw["updates"] == 200 and raw["pid"] == os.getpid()
    status = read_status(tmp_path)
    assert status is not None and isinstance(status.updated, str)
    assert status == RunStatus(
        RunState.PRUNED, 300, 900, 200, 4.5, 9.0, None, pid=os.getpid(), updated=status.updated
    )
    assert written.pid is None  # the caller's record is not changed


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'["finished", 1]', b"42", b'{"state": "\xff"}', b"\xff\xfe\x00garbage"],
    ids=["empty", "not-json", "list", "number", "non-utf8", "utf16-bom"],
)
def test_unreadable_status_reads_as_none(tmp_path: Path, content: bytes):
    (tmp_path / "status.json").write_bytes(content)
    assert read_status(tmp_path) is None
    assert read_status(tmp_path / "missing") is None


def test_status_fields_of_the_wrong_type_read_as_defaults(tmp_path: Path):
    garbage = {
        "state": "exploded",
        "step": "300",
        "planned_steps": True,
        "updates": 1.5,
        "wall_time": None,
        "best_eval": "high",
        "last_eval": 7,
        "pid": [1],
        "updated": 5,
        "extra": {"ignored": True},
    }
    (tmp_path / "status.json").write_text(json.dumps(garbage))
    assert read_status(tmp_path) == RunStatus(RunState.INTERRUPTED, 0, 0, 0, 0.0, None, 7.0, None, None)
    (tmp_path / "status.json").write_text(json.dumps({"state": ["running"]}))
    assert read_status(tmp_path) == RunStatus(RunState.INTERRUPTED, 0, 0)


def test_a_config_that_is_not_utf8_is_a_user_error(tmp_path: Path):
    (tmp_path / "config.toml").write_bytes(b'env_id = "\xff"\n')
    with pytest.raises(UserError, match="cannot read"):
        read_config(tmp_path)


def test_existing_non_empty_run_dir_is_refused(tmp_path: Path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    with (
        pytest.raises(UserError, match="already exists and is not empty"),
        create_run_dir("CartPole-v1", 0, tmp_path / "x"),
    ):
        pass
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["f"]  # no lock file left either
    assert (tmp_path / "x" / "f").read_text() == "keep me"


def test_run_names_never_collide(tmp_path: Path):
    with (
        create_run_dir("ALE/Pong-v5", 1, runs_root=tmp_path) as first,
        create_run_dir("ALE/Pong-v5", 1, runs_root=tmp_path) as second,
    ):
        assert first != second and first.parent == second.parent == tmp_path / "ALE-Pong-v5"


def _copy_model(tiny_run: Path, tmp_path: Path) -> Path:
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"model{suffix}").write_bytes((tiny_run / f"model{suffix}").read_bytes())
    return tmp_path / "model.safetensors"


def test_truncated_model_file_is_refused(tiny_run: Path, tmp_path: Path):
    model = _copy_model(tiny_run, tmp_path)
    model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_trained(model, device="cpu")


def test_missing_or_corrupt_metadata_is_refused(tiny_run: Path, tmp_path: Path):
    model = _copy_model(tiny_run, tmp_path)
    model.with_suffix(".json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable or corrupt"):
        load_trained(model, device="cpu")
    model.with_suffix(".json").unlink()
    with pytest.raises(UserError, match="is missing"):
        load_trained(model, device="cpu")


def test_pickle_under_a_model_name_is_refused_without_running_it(tiny_run: Path, tmp_path: Path):
    model = _copy_model(tiny_run, tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    model.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_trained(model, device="cpu")
    assert not marker.exists()


def test_weights_that_do_not_fit_the_description_are_refused(tiny_run: Path, tmp_path: Path):
    model = _copy_model(tiny_run, tmp_path)
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["network"]["net_arch"] = [32]
    model.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not match its description"):
        load_trained(model, device="cpu")
