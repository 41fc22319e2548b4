"""FIFO replay buffer of (s, a, r, s') transitions in preallocated numpy arrays.

AC-ODM's task is continuing (no episode end), so there is no `done` flag. When full, the oldest
transition is overwritten (FIFO, capacity 10,000 in the paper).
"""

from __future__ import annotations

import numpy as np


class ReplayBuffer:
    def __init__(self, capacity: int, state_dim: int, num_domains: int, reward_dim: int):
        if capacity < 1:
            raise ValueError(f"mixing.replay_capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, num_domains), dtype=np.float32)
        self.rewards = np.zeros((capacity, reward_dim), dtype=np.float32)
        self.next_states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.pos = 0  # next slot to write (the oldest transition once full)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, state: np.ndarray, action: np.ndarray, reward: np.ndarray, next_state: np.ndarray) -> None:
        i = self.pos
        self.states[i] = state
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_states[i] = next_state
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def ordered_indices(self) -> np.ndarray:
        """Indices of the stored transitions, oldest first."""
        if self.size < self.capacity:
            return np.arange(self.size)
        return (np.arange(self.capacity) + self.pos) % self.capacity

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.states[indices], self.actions[indices], self.rewards[indices], self.next_states[indices]

    def sample(self, batch_size: int, rng: np.random.Generator):
        """Uniform minibatch without replacement (indices from the caller's seeded generator)."""
        indices = rng.choice(self.size, size=min(batch_size, self.size), replace=False)
        return self.get(self.ordered_indices()[indices])

    def state_dict(self) -> dict:
        # Saved oldest-first and only the filled part: a resumed buffer is identical in content and order.
        order = self.ordered_indices()
        s, a, r, s2 = self.get(order)
        return {"capacity": self.capacity, "states": s, "actions": a, "rewards": r, "next_states": s2}

    def load_state_dict(self, sd: dict) -> None:
        if int(sd["capacity"]) != self.capacity:
            raise ValueError(f"replay buffer capacity {sd['capacity']} in the state, {self.capacity} configured")
        n = len(sd["states"])
        self.states[:] = 0
        self.actions[:] = 0
        self.rewards[:] = 0
        self.next_states[:] = 0
        self.states[:n] = sd["states"]
        self.actions[:n] = sd["actions"]
        self.rewards[:n] = sd["rewards"]
        self.next_states[:n] = sd["next_states"]
        self.size = n
        self.pos = n % self.capacity
