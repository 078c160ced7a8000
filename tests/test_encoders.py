"""Levers for Atari on a CPU: data-efficient Rainbow's cheap encoder and DrQ's random shifts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dqn_cli.agent import random_shift, shift_frames
from dqn_cli.errors import UserError
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.presets import resolve
from dqn_cli.training import train


def test_the_data_efficient_encoder_is_two_5x5_stride_5_convolutions():
    spec = network_spec((4, 84, 84), 6, [256], obs_dtype="uint8", encoder="der")
    network = build_q_network(spec)
    # conv 4->32 5x5: 3,232; conv 32->64 5x5: 51,264; 3x3x64 = 576 features -> 256: 147,712; 256 -> 6: 1,542
    assert sum(p.numel() for p in network.parameters()) == 3_232 + 51_264 + 147_712 + 1_542
    q = network(torch.zeros(5, 4, 84, 84, dtype=torch.uint8))
    assert q.shape == (5, 6)
    # the Nature encoder is still the default, and its spec reads as it always did (saved models load)
    assert network_spec((4, 84, 84), 6, [512], obs_dtype="uint8")["kind"] == "nature_cnn"


def test_shift_frames_moves_each_stack_by_its_offsets_repeating_the_edges():
    frames = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8).expand(2, 2, 3, 3)
    shifted = shift_frames(frames, torch.tensor([[1, 0], [-1, 2]]))  # stack 0: (+1, -1), stack 1: (0, +2)
    assert shifted.dtype == torch.uint8 and shifted.shape == (2, 2, 3, 3)
    # out[i, j] = in[clamp(i + rows), clamp(j + columns)]
    assert shifted[0, 0].tolist() == [[4, 4, 5], [7, 7, 8], [7, 7, 8]]
    assert shifted[1, 1].tolist() == [[3, 3, 3], [6, 6, 6], [9, 9, 9]]
    assert torch.equal(shifted[0, 0], shifted[0, 1])  # one offset per stack: its frames stay aligned


def test_random_shifts_stay_within_the_pad_and_follow_torchs_seed():
    frames = (
        torch.arange(16 * 16, dtype=torch.int64).reshape(1, 1, 16, 16).expand(200, 1, 16, 16).to(torch.uint8)
    )
    torch.manual_seed(3)
    first = random_shift(frames, 2)
    torch.manual_seed(3)
    assert torch.equal(first, random_shift(frames, 2))  # the checkpointed generator: resumes exactly
    # the centre pixel (8, 8) holds 8 * 16 + 8; after a shift it holds (8 + dy) * 16 + (8 + dx)
    centre = first[:, 0, 8, 8].numpy().astype(int)
    dy, dx = centre // 16 - 8, centre % 16 - 8
    assert set(dy) == set(dx) == {-2, -1, 0, 1, 2}


def test_shifts_are_for_frame_stacks_only(tmp_path: Path):
    _, hp = resolve("CartPole-v1", sets=["augment_shift=4"])
    with pytest.raises(UserError, match="augment_shift"):
        train("CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_atari_trains_with_the_cheap_encoder_and_shifts(tmp_path: Path):
    sets = ["n_timesteps=400", "learning_starts=200", "buffer_size=1000", "eval_freq=0", "encoder=der"]
    _, hp = resolve("PongNoFrameskip-v4", sets=[*sets, "augment_shift=4", "net_arch=[256]"])
    result = train("PongNoFrameskip-v4", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert result.updates == (400 - 200) // 4
    assert '"kind": "der_cnn"' in (tmp_path / "run" / "model.json").read_text()
