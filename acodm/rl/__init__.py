"""Reinforcement-learning pieces of AC-ODM: networks, DDPG update, replay buffer, simplex exploration."""

from acodm.rl.ddpg import DDPG, DDPGConfig, lr_at, polyak_update
from acodm.rl.exploration import LogitGaussianNoise
from acodm.rl.networks import Actor, Critic, count_parameters
from acodm.rl.replay import ReplayBuffer

__all__ = ["DDPG", "DDPGConfig", "lr_at", "polyak_update", "LogitGaussianNoise", "Actor", "Critic",
           "count_parameters", "ReplayBuffer"]  # fmt: skip
