"""Actor and critic MLPs of AC-ODM (shapes from the paper's released code, see docs/methods.md, "AC-ODM").

Trunk: Linear(in → H) + (L − 1) × Linear(H → H), each followed by LayerNorm + ReLU.
Paper size: H = 1024, L = 5 (the input layer plus 4 hidden layers), ≈4.3M parameters for K = 22.
Actor: trunk(s) → Linear(H → K) → softmax (a point on the simplex).
Critic: trunk(s ‖ K·a) → Linear(H → num_outputs) (K outputs for the per-domain "paper" reward, 1 for
the scalar "linear" reward).

The critic sees the action scaled by K: simplex entries average 1/K (0.045 for K = 22) while the state's
z-scored features are O(1), and after the first Linear + LayerNorm an unscaled action is nearly invisible
(the critic's dQ/da ≈ 0 and the actor random-walks). With K·a (mean 1), in the synthetic environment of
tests/test_mixers_synthetic.py the actor ended on the best domain in 6 of 6 seeds instead of 4 of 6
(progress_scale=1), and 4 of 6 instead of 2 of 6 with the paper's ×100 progress feature. The scaling is
inside the network, so parameter shapes are the paper's.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp_trunk(in_features: int, hidden_size: int, num_hidden_layers: int) -> nn.Sequential:
    """``num_hidden_layers`` blocks Linear → LayerNorm → ReLU (the first maps in_features → hidden)."""
    if num_hidden_layers < 1:
        raise ValueError(f"mixing.num_hidden_layers must be >= 1, got {num_hidden_layers}")
    if hidden_size < 1:
        raise ValueError(f"mixing.hidden_size must be >= 1, got {hidden_size}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(width, hidden_size), nn.LayerNorm(hidden_size), nn.ReLU()]
        width = hidden_size
    return nn.Sequential(*layers)


class Actor(nn.Module):
    def __init__(self, state_dim: int, num_domains: int, hidden_size: int = 1024, num_hidden_layers: int = 5):
        super().__init__()
        self.state_dim = state_dim
        self.num_domains = num_domains
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.trunk = mlp_trunk(state_dim, hidden_size, num_hidden_layers)
        self.head = nn.Linear(hidden_size, num_domains)

    def forward(self, state_BS: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.trunk(state_BS)), dim=-1)  # (B, K) on the simplex


class Critic(nn.Module):
    def __init__(
        self,
        state_dim: int,
        num_domains: int,
        num_outputs: int,
        hidden_size: int = 1024,
        num_hidden_layers: int = 5,
    ):
        super().__init__()
        self.state_dim = state_dim
        self.num_domains = num_domains
        self.num_outputs = num_outputs
        self.trunk = mlp_trunk(state_dim + num_domains, hidden_size, num_hidden_layers)
        self.head = nn.Linear(hidden_size, num_outputs)

    def forward(self, state_BS: torch.Tensor, action_BK: torch.Tensor) -> torch.Tensor:
        # K·a: unit-mean action features, on the scale of the z-scored state (see the module docstring)
        return self.head(self.trunk(torch.cat([state_BS, action_BK * self.num_domains], dim=-1)))  # (B, outputs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
