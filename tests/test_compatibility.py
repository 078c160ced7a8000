"""Run folders written by earlier versions keep working. The fixture is a run folder made by the code of
commit 7c2b923 (checkpoint format dqn-checkpoint/1): CartPole, 2 envs, dueling, 3-step returns and
prioritized replay, trained to 600 steps; beside it the weights that same code reached when it resumed
the run to 1,200 steps. Another CPU's kernels (AVX-512 instead of AVX2) round some float32 sums
differently, by a unit in the last place, so weights are compared within 1e-6. A wrongly restored replay,
RNG or optimizer state sends training elsewhere by orders of magnitude more."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from helpers import dqn
from safetensors.numpy import load_file

from dqn_cli.training import resume

FIXTURES = Path(__file__).parent / "fixtures"
FIRST_FORMAT_RUN = FIXTURES / "v1-cartpole-run"


def test_a_run_checkpointed_by_the_previous_version_resumes_to_the_same_weights(tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(FIRST_FORMAT_RUN, run)
    result, exact = resume(run, steps=1200, device="cpu", quiet=True)
    assert exact and result.steps == 1200
    resumed = load_file(run / "model.safetensors")
    expected = load_file(FIXTURES / "v1-cartpole-run-resumed-to-1200.safetensors")
    assert resumed.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(resumed[key], expected[key], rtol=0, atol=1e-6, err_msg=key)


def test_the_previous_versions_run_folder_is_listed_and_its_model_plays(tmp_path: Path):
    shutil.copytree(FIRST_FORMAT_RUN, tmp_path / "runs" / "CartPole-v1" / "old")
    listed = dqn("runs", cwd=tmp_path, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert listed.returncode == 0, listed.stderr
    assert "CartPole-v1/old" in listed.stdout and "finished" in listed.stdout
    played = dqn("eval", "--episodes", "2", "--json", cwd=tmp_path)
    assert played.returncode == 0, played.stderr
    assert '"env_id": "CartPole-v1"' in played.stdout
