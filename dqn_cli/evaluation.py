"""Greedy (or epsilon-greedy) play: scoring a policy, watching it, and filming it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dqn_cli.agent import epsilon_greedy
from dqn_cli.envs import check_env_fits, make_single_env, make_vector_env
from dqn_cli.errors import UserError
from dqn_cli.networks import build_q_network, resolve_device
from dqn_cli.runfiles import load_model, resolve_model_path

Policy = Callable[[np.ndarray], np.ndarray]
MAX_PARALLEL_EVAL_ENVS = 16


@dataclass
class TrainedModel:
    path: Path
    meta: dict[str, Any]
    q_network: nn.Module
    device: torch.device
    env_id: str  # where it plays: the env it was trained on unless another was asked for

    @property
    def n_actions(self) -> int:
        return int(self.meta["action_space"]["n"])


def load_trained(
    run_or_model: Path | None, final: bool = False, device: str = "auto", env_id: str | None = None
) -> TrainedModel:
    """Rebuild a saved Q-network from its JSON description and safetensors weights. ``env_id`` plays it on
    another env, which must have the observation shape and action count it was trained with."""
    loaded = load_model(resolve_model_path(run_or_model, final))
    if env_id is not None and env_id != loaded.env_id:
        check_env_fits(env_id, loaded.meta, loaded.env_id)
    torch_device = resolve_device(device)
    try:
        q_network = build_q_network(loaded.meta["network"])
        q_network.load_state_dict(loaded.weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{loaded.path} does not match its description in {loaded.path.with_suffix('.json')}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return TrainedModel(
        loaded.path, loaded.meta, q_network.to(torch_device), torch_device, env_id or loaded.env_id
    )


def video_path(model_path: Path, out: Path | None) -> Path:
    """Where a recording goes: ``out`` as given, a bare name in the run's videos/, or a timestamped mp4."""
    if out is None:
        out = Path(f"{model_path.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.mp4")
    if out.suffix not in (".mp4", ".gif"):
        raise UserError(f"--out must end in .mp4 or .gif, got {out.name!r}")
    if out.parent == Path():
        out = model_path.parent / "videos" / out
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def make_policy(
    q_network: nn.Module, n_actions: int, epsilon: float, seed: int, device: torch.device
) -> Policy:
    """Batch of observations -> actions; epsilon > 0 adds seeded random actions (e.g. 0.05 for Atari)."""
    rng = np.random.default_rng(seed)
    q_network.eval()

    def act(obs: np.ndarray) -> np.ndarray:
        return epsilon_greedy(q_network, obs, epsilon, n_actions, rng, device)

    return act


def evaluate(policy: Policy, env_id: str, episodes: int, seed: int) -> list[float]:
    """Undiscounted return of ``episodes`` full episodes, played in parallel envs seeded from ``seed``.

    Env ``i`` of ``k`` plays episodes ``i, i+k, ...``, so the result depends only on (policy, seed, episodes).
    """
    n_envs = min(episodes, MAX_PARALLEL_EVAL_ENVS)
    quota = [len(range(i, episodes, n_envs)) for i in range(n_envs)]
    envs = make_vector_env(env_id, n_envs)
    try:
        obs, _ = envs.reset(seed=seed)
        running = np.zeros(n_envs)
        finished: list[list[float]] = [[] for _ in range(n_envs)]
        while any(len(done) < q for done, q in zip(finished, quota, strict=True)):
            obs, rewards, terminated, truncated, _ = envs.step(policy(obs))
            running += rewards
            for i in np.flatnonzero(terminated | truncated):
                if len(finished[i]) < quota[i]:
                    finished[i].append(float(running[i]))
                running[i] = 0.0
    finally:
        envs.close()
    # Interleave back into episode order i, i+k, ...
    return [finished[e % n_envs][e // n_envs] for e in range(episodes)]


def play_rendered(policy: Policy, env_id: str, episodes: int, seed: int) -> list[float]:
    """Play in a window (human render mode) so the user can watch."""
    env = make_single_env(env_id, render_mode="human")
    try:
        returns = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(int(policy(obs[None])[0]))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return returns
    except Exception as exc:  # pygame/SDL failures surface as assorted exception types
        if isinstance(exc, UserError):
            raise
        raise UserError(
            f"cannot open a game window: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None
    finally:
        env.close()


def record_video(
    policy: Policy, env_id: str, episodes: int, seed: int, out_path: Path
) -> tuple[list[float], int]:
    """Film ``episodes`` episodes from the env's ``rgb_array`` render into an mp4 or gif.

    Each episode contributes its reset frame plus one frame per step. Returns (returns, frame count).
    """
    import imageio.v2 as imageio

    env = make_single_env(env_id, render_mode="rgb_array")
    fps = int(env.metadata.get("render_fps") or 30)
    tmp_path = out_path.with_name(f".{out_path.stem}.tmp{out_path.suffix}")
    if out_path.suffix == ".gif":
        writer = imageio.get_writer(tmp_path, mode="I", duration=1000 / fps, loop=0)
    else:
        # macro_block_size=1 keeps odd frame sizes as they are instead of resizing them.
        writer = imageio.get_writer(tmp_path, fps=fps, codec="libx264", macro_block_size=1, quality=7)
    returns, frames = [], 0
    try:
        with writer:
            for episode in range(episodes):
                obs, _ = env.reset(seed=seed + episode)
                writer.append_data(env.render())
                frames += 1
                total, done = 0.0, False
                while not done:
                    obs, reward, terminated, truncated, _ = env.step(int(policy(obs[None])[0]))
                    writer.append_data(env.render())
                    frames += 1
                    total += float(reward)
                    done = terminated or truncated
                returns.append(total)
        os.replace(tmp_path, out_path)
    finally:
        env.close()
        tmp_path.unlink(missing_ok=True)
    return returns, frames
