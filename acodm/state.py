"""AC-ODM state features from per-domain statistics (docs/methods.md, "AC-ODM").

Blocks, in this order (z(v) = clamp((v − mean v)/(std v + 1e-8), −3, 3) over the entries of a block,
std with N − 1 in the denominator as torch.std):

    loss               z(per-domain mean training loss this step)             K
    loss_change        z(loss − the PREVIOUS step's loss)                     K
    sample_count       z(per-domain sample counts this step)                  K
    probe_norm         z(Frobenius norms ‖W_p‖_F of the P probe matrices)      P
    probe_norm_change  z(‖W_p,t‖_F − ‖W_p,t−1‖_F), see below                  P
    progress           step / total_steps × progress_scale (not z-scored)     1

dim = 3K + 2P + 1 (85 for K = 22, P = 9).

What the released code does (DANG-ai/AC-ODM at e95863e, ``megatron/data/agent.py``):
- z is ``mean_std_norm`` (L16-L20): ``tensor.std()``, the unbiased (N − 1) estimate, + 1e-8, clamp ±3.
  ``zscore`` here uses the same (ddof=1); a block of one entry has no spread and gives 0 (torch: NaN).
- The state is assembled in ``update_pools`` (L349-L376), which runs on the micro-batch that completes
  the accumulation *before* the optimizer step (``megatron/training.py`` L880 then ``model.step()`` L897;
  L1937 then L1941), so the probe matrices W_t are read before step t's update.
- Both "change" blocks are measured against the FIRST step ever: ``last_domain_loss`` and
  ``last_weights_list`` are set only in the ``else`` branch taken on the first call (L360-L367). The
  norm-change block is ‖W_p,t − W_p,first‖_F, the Frobenius norm of the matrix's change since the first
  step (L362), not a change of its norm.
This module measures both changes against the previous step (docs/methods.md, defect 3). For the probe block
the spec's ``probe_change`` chooses the feature:
- ``"norm_diff"`` (default, this project's): ‖W_p,t‖_F − ‖W_p,t−1‖_F, computed here from the norms.
- ``"weight_change"``: the caller passes ``probe_change_norms`` = ‖W_p,t − W_p,ref‖_F to ``build``
  (W_ref = the previous step's matrices for the fix of defect 3, the first step's to reproduce the
  released code); only the trainer holds the matrices.

Absent or non-finite statistics: a domain without tokens (or with a non-finite loss) carries its last
known loss, so its loss change is 0; before a domain's first loss it takes the mean of this step's known
losses (0 if none is known yet). Missing/non-finite probe norms carry the previous value (0 before any).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

BLOCK_NAMES = ("loss", "loss_change", "sample_count", "probe_norm", "probe_norm_change", "progress")


PROBE_CHANGE = ("norm_diff", "weight_change")


def zscore(v: np.ndarray, clip: float = 3.0, ddof: int = 1) -> np.ndarray:
    """clamp((v − mean)/(std + 1e-8), ±clip); ddof=1 as torch.std in the reference's mean_std_norm."""
    v = np.asarray(v, dtype=np.float64)
    if v.size <= ddof:
        return np.zeros_like(v)  # no spread to measure (the reference's torch.std gives NaN here)
    return np.clip((v - v.mean()) / (v.std(ddof=ddof) + 1e-8), -clip, clip)


@dataclass(frozen=True)
class StateSpec:
    """What a state vector means; recorded with an exported actor so a loader can check it."""

    domains: tuple[str, ...]
    num_probes: int
    blocks: tuple[tuple[str, int], ...] = field(default=())
    # progress feature = step / total_steps × progress_scale. The paper uses 100 (a percentage).
    progress_scale: float = 100.0
    # probe_norm_change feature: "norm_diff" | "weight_change" (module docstring)
    probe_change: str = "norm_diff"

    def __post_init__(self) -> None:
        if self.probe_change not in PROBE_CHANGE:
            raise ValueError(f"probe_change must be one of {PROBE_CHANGE}, got {self.probe_change!r}")
        k, p = len(self.domains), self.num_probes
        expected = (("loss", k), ("loss_change", k), ("sample_count", k), ("probe_norm", p),
                    ("probe_norm_change", p), ("progress", 1))  # fmt: skip
        if not self.blocks:
            object.__setattr__(self, "blocks", expected)
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "blocks", tuple((str(n), int(s)) for n, s in self.blocks))

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def dim(self) -> int:
        return sum(size for _, size in self.blocks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["domains"] = list(self.domains)
        d["blocks"] = [[n, s] for n, s in self.blocks]
        d["dim"] = self.dim
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StateSpec:
        return cls(domains=tuple(d["domains"]), num_probes=int(d["num_probes"]),
                   blocks=tuple((n, int(s)) for n, s in d["blocks"]),
                   progress_scale=float(d.get("progress_scale", 100.0)),
                   probe_change=str(d.get("probe_change", "norm_diff")))  # fmt: skip

    def check_compatible(self, other: StateSpec, what: str = "the loaded actor") -> None:
        """Raise a clear error if ``other`` (what an actor was trained on) differs from this run's spec."""
        if other.domains != self.domains:
            mine, theirs = list(self.domains), list(other.domains)
            if sorted(mine) == sorted(theirs):
                moved = [f"{d!r}: position {theirs.index(d)} there, {i} here" for i, d in enumerate(mine)
                         if theirs.index(d) != i]  # fmt: skip
                raise ValueError(
                    f"{what} was trained with the same domains in another order ({'; '.join(moved)}); "
                    f"list the run's domains in the actor's order: {theirs}"
                )
            raise ValueError(
                f"{what} was trained on other domains: missing here {sorted(set(theirs) - set(mine))}, "
                f"not known to it {sorted(set(mine) - set(theirs))}"
            )
        if other.blocks != self.blocks:
            raise ValueError(
                f"{what} expects state blocks {list(other.blocks)} (num_probes={other.num_probes}), this run "
                f"builds {list(self.blocks)} (num_probes={self.num_probes}); use the same probe layers count"
            )
        if other.progress_scale != self.progress_scale:
            raise ValueError(
                f"{what} was trained with progress_scale={other.progress_scale}, this run uses "
                f"{self.progress_scale}; set mixing.progress_scale to match"
            )
        if other.probe_change != self.probe_change:
            raise ValueError(
                f"{what} was trained with the probe-change feature {other.probe_change!r}, this run builds "
                f"{self.probe_change!r}; use the same feature"
            )


class StateBuilder:
    """Stateful: remembers the last known per-domain losses and probe norms (for carries and changes)."""

    def __init__(self, spec: StateSpec):
        self.spec = spec
        k, p = spec.num_domains, spec.num_probes
        self.last_loss = np.zeros(k)  # last known mean loss per domain (carried when absent)
        self.loss_known = np.zeros(k, dtype=bool)
        self.prev_loss = np.zeros(k)  # the previous step's (carried) loss vector
        self.prev_norms = np.zeros(p)
        self.num_built = 0

    def build(self, step: int, total_steps: int, loss_mean: np.ndarray, sample_count: np.ndarray,
              probe_norms: np.ndarray | None, probe_change_norms: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """(dim,) float32 state after a step with these statistics; updates the memory.

        ``probe_change_norms`` (P,) = ‖W_p,t − W_p,ref‖_F is read only when the spec's probe_change is
        "weight_change" (missing or non-finite entries give 0 for the step).
        """
        # Extreme finite inputs may overflow inside the z-scores; the result is sanitised below.
        with np.errstate(all="ignore"):
            return self._build(step, total_steps, loss_mean, sample_count, probe_norms, probe_change_norms)

    def _build(self, step: int, total_steps: int, loss_mean: np.ndarray, sample_count: np.ndarray,
               probe_norms: np.ndarray | None, probe_change_norms: np.ndarray | None) -> np.ndarray:  # fmt: skip
        k, p = self.spec.num_domains, self.spec.num_probes
        loss_mean = np.asarray(loss_mean, dtype=np.float64)
        fresh = np.isfinite(loss_mean)
        loss = self.last_loss.copy()
        loss[fresh] = loss_mean[fresh]
        never = ~fresh & ~self.loss_known
        if never.any():
            known = fresh | self.loss_known
            loss[never] = loss[known].mean() if known.any() else 0.0
        self.loss_known |= fresh
        # First state: no previous step, so every change is 0 by definition.
        loss_change = loss - self.prev_loss if self.num_built > 0 else np.zeros(k)

        counts = np.asarray(sample_count, dtype=np.float64)
        counts = np.where(np.isfinite(counts), counts, 0.0)

        norms = self.prev_norms.copy()
        if probe_norms is not None and p > 0:
            given = np.asarray(probe_norms, dtype=np.float64)
            if given.shape != (p,):
                raise ValueError(
                    f"StepStats.probe_norms has shape {given.shape}, the state expects ({p},) probe norms; "
                    f"set mixing.num_probe_layers to the trainer's number of state probes"
                )
            ok = np.isfinite(given)
            norms[ok] = given[ok]
        if self.spec.probe_change == "weight_change":
            norm_change = np.zeros(p)
            if probe_change_norms is not None and p > 0:
                given = np.asarray(probe_change_norms, dtype=np.float64)
                if given.shape != (p,):
                    raise ValueError(f"probe_change_norms has shape {given.shape}, the state expects ({p},)")
                norm_change = np.where(np.isfinite(given), given, 0.0)
        else:
            norm_change = norms - self.prev_norms if self.num_built > 0 else np.zeros(p)

        progress = np.array([self.spec.progress_scale * step / max(total_steps, 1)])
        state = np.concatenate([zscore(loss), zscore(loss_change), zscore(counts), zscore(norms),
                                zscore(norm_change), progress])  # fmt: skip
        self.last_loss = loss
        self.prev_loss = loss
        self.prev_norms = norms
        self.num_built += 1
        assert state.shape == (self.spec.dim,)
        return np.where(np.isfinite(state), state, 0.0).astype(np.float32)

    def state_dict(self) -> dict:
        return {"last_loss": self.last_loss.copy(), "loss_known": self.loss_known.copy(),
                "prev_loss": self.prev_loss.copy(), "prev_norms": self.prev_norms.copy(),
                "num_built": self.num_built}  # fmt: skip

    def load_state_dict(self, sd: dict) -> None:
        self.last_loss = np.asarray(sd["last_loss"], dtype=np.float64).copy()
        self.loss_known = np.asarray(sd["loss_known"], dtype=bool).copy()
        self.prev_loss = np.asarray(sd["prev_loss"], dtype=np.float64).copy()
        self.prev_norms = np.asarray(sd["prev_norms"], dtype=np.float64).copy()
        self.num_built = int(sd["num_built"])
