"""Per-domain gradient alignment gathered in the ordinary backward pass (docs/design.md, "Statistics").

For a linear probe layer y = x Wᵀ, domain k's weight gradient over one optimizer step is
G_k = Σ_{t∈k} δ_tᵀ x_t, where x_t is the layer input of token t and δ_t the gradient of the SUM of
per-token losses at the layer output. A forward hook saves x, a tensor hook on the output sees δ, and
the per-domain statistic is accumulated right there, so no extra forward/backward is needed:

- ``exact``:  G_k                         (K x out x in fp32 per probe; tests and small models)
- ``sketch``: S_k = R_outᵀ G_k R_in = Σ_{t∈k} (δ_t R_out)ᵀ (x_t R_in)   (K x m_out x m_in fp32 per probe)
  with R_out (out x m_out), R_in (in x m_in) independent random projections with E[R Rᵀ] = I (scaled
  Haar-orthonormal columns; exact once m >= the dimension), drawn from a seed that every rank shares.
  Hence E⟨S_i, S_j⟩ = ⟨G_i, G_j⟩ (unbiased). Cost per micro-batch: two thin projections (tokens x in x
  m_in in the forward, tokens x out x m_out in the backward) and K small (m_out x tokens_k x m_in)
  products; the forward keeps only tokens x m_in floats per probe until the backward.

``gram(packed, token_count_K)`` divides by the per-domain token counts (g_k = S_k / n_k is the gradient of
domain k's MEAN loss) and returns ⟨g_i, g_j⟩ summed over probes; ``alignment_scores`` turns it into
DoGE's / AC-ODM's W_i = ⟨g_i, Σ_j g_j⟩ (optionally without the self term, optionally / mean ‖g_k‖).
Only the weight gradient is sketched; the bias gradient is left out (docs/methods.md, AC-ODM: "gradients of the MLP
output projection" matrices).

Choosing m_out, m_in. The estimator's relative error falls like sqrt(1/m_out + 1/m_in) (for the part of
each dimension that is compressed); the all-reduce grows like K·m_out·m_in, memory like that plus
(out·m_out + in·m_in) for R; compute like tokens·(in·m_in + out·m_out), small next to the layer's own
3·tokens·in·out. Exact mode keeps a view of the probe input until the backward (no copy, but under
activation checkpointing it keeps that input alive).
Measured with ``python tests/test_alignment_sketch.py`` (tiny GPT-NeoX, 6 layers, default probes = layers
5/3/1 ``dense_4h_to_h``, K = 4 synthetic domains, 8 steps x 2 micro-batches x 4 x 32 tokens, numbers are
means over 5 seeds; corr = Pearson correlation of sketched vs exact scores over steps x domains):

    m_out = m_in         |   16  |   32  |   64  |  128
    hidden 64  corr(W)   | 0.694 | 0.841 | 0.947 | 0.983
      corr(W no self, /mean norm) | 0.445 | 0.692 | 0.917 | 0.969
      Gram rel. error    | 0.161 | 0.088 | 0.044 | 0.028
    hidden 128 corr(W)   | 0.611 | 0.791 | 0.913 | 0.973
      corr(W no self, /mean norm) | 0.267 | 0.401 | 0.633 | 0.897
      Gram rel. error    | 0.192 | 0.119 | 0.068 | 0.036
    bytes/probe, Pythia-1B (2048 x 8192), K = 22 | 0.68 MB | 1.4 MB | 3.0 MB | 6.7 MB   (exact: 1.48 GB)
    time/micro-batch vs no hooks (hidden 256, 8 x 128 tokens, 2 CPU cores) | 1.01x | 1.08x | 1.04x | 1.12x
                                                                            (exact 1.07x; CPU noise ~ ±4%)

The self-term-free score (AC-ODM's reward) is a difference of small cross terms when domains' gradients
are nearly orthogonal, as with these synthetic domains, and needs a larger sketch than W itself: check
the correlation on your own model/data with the script before lowering m.

Semantics the trainer relies on:

- ``begin_micro_batch(domain_BT, grad_scale)`` opens a micro-batch; the domain ids and scale are BOUND
  TO THE FORWARD that follows (captured by the hook closure), so statistics stay correct however forwards
  and backwards interleave (gradient accumulation, pipeline 1F1B). Domain ids < 0 mark tokens to ignore
  (padding). Pass ``domain_BT`` as a CPU tensor when you have one (the loader does): sorting tokens by
  domain happens there, with no device synchronisation.
- Activation checkpointing: with non-reentrant checkpointing the forward runs with gradients enabled
  and is recomputed inside the backward; the recompute is recognised (we are inside an autograd graph
  task) and ignored, the original output's hook does the work. With reentrant checkpointing
  (DeepSpeed's, ``torch.utils.checkpoint(use_reentrant=True)``) the first pass runs under ``no_grad``:
  each probe then pushes the open micro-batch onto a per-probe FIFO, and the recompute inside the
  backward pops the oldest entry, so the right domain ids are used even when micro-batches interleave
  (pipeline parallelism). Evaluation forwards should run under ``model.eval()`` or after ``reset()``; a
  ``no_grad`` forward of a module in training mode while a micro-batch is open is taken for a first
  checkpoint pass (``reset()`` clears the FIFOs).
- Tensor parallelism: a row- or column-parallel probe holds a slice of the in or out dimension. The slice
  is read off the layer's Megatron-style partition marks (``partition_slice``: the weight's
  ``tensor_model_parallel`` / ``partition_dim``, the module's full ``in_features`` / ``out_features`` and
  its ``tp_group``), so the layers need not know the probes; a ``ProbeSlice`` given as the constructor
  argument ``slices={name: ProbeSlice(...)}``, or as an ``alignment_slice`` attribute on the module, takes
  precedence (layers without the marks). Sketch mode then uses the matching rows of the full-size R, exact
  mode writes into the slice of a full-size buffer, so the shards' ``packed()`` tensors simply add up in
  the trainer's all-reduce (as data-parallel ranks' do). Probe outputs may be a tuple (output, bias):
  the first element is hooked.
- fp16/bf16: x and δ are cast to fp32 before any product; statistics are fp32. An fp16 overflow step
  gives inf/NaN statistics, which the mixers skip.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from acodm.gram import alignment_scores  # noqa: F401  # re-exported: W_i lives in acodm/gram.py

MODES = ("exact", "sketch")
# Wrappers (DDP / DeepSpeed ``module.``, torch.compile ``_orig_mod.``) prefix module names; R seeds are
# derived from the name without them so that every rank draws the same R whatever it wrapped.
_WRAPPER_PREFIX = re.compile(r"^(?:(?:module|_orig_mod)\.)+")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# A negative integer written as a whole alternative of a group, "(-1|-3)", or between escaped dots, "\.-1\.".
_NEGATIVE_INDEX = re.compile(r"(?<=[(|.])-(\d+)(?=[|)\\])")
_PROJECTION_CHUNK_TOKENS = 4096  # rows projected at once: bounds the fp32 copy of a bf16 activation


@dataclass
class AlignmentConfig:
    """How per-domain gradient statistics are gathered.

    ``probe_pattern`` selects the probe layers: one regex or a list of them, searched (``re.search``)
    in the model's module names; a list entry that is an exact module name selects that module. A
    negative integer written as a whole alternative of a group (``layers\\.(-1|-3)\\.``) or between
    escaped dots (``layers\\.-1\\.``) counts from the end: it becomes L + i, with L the number of layers
    (``num_layers``, or 1 + the largest N in module names containing ``layers.N.``); an index deeper than
    the model selects nothing (of -1/-3/-5 a 2-layer model gets layer 1 only). Default: the MLP
    output projection of the last, third-last and fifth-last layers (docs/methods.md, AC-ODM's reward).
    """

    mode: str = "sketch"  # "exact" (K x out x in per probe) | "sketch" (K x m_out x m_in per probe)
    probe_pattern: str | list[str] = r"layers\.(-1|-3|-5)\.mlp\.dense_4h_to_h$"
    sketch_out: int = 64  # m_out: columns of R_out; estimator variance ~ 1/m_out + 1/m_in
    sketch_in: int = 64  # m_in: columns of R_in
    seed: int = 1234  # R matrices are drawn from (seed, probe name): identical on every rank
    num_layers: int | None = None  # resolves negative layer indices; None = counted from module names
    # (pass it under pipeline parallelism, where a stage holds only some of the layers)
    sequence_first: bool = False  # probe inputs are (T, B, in) instead of (B, T, in)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"alignment.mode must be one of {MODES}, got {self.mode!r}")
        if self.sketch_out < 1 or self.sketch_in < 1:
            raise ValueError(f"alignment.sketch_out and sketch_in must be >= 1, got "
                             f"{self.sketch_out}, {self.sketch_in}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"alignment.num_layers must be >= 1 or None, got {self.num_layers}")
        patterns = [self.probe_pattern] if isinstance(self.probe_pattern, str) else list(self.probe_pattern)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"alignment.probe_pattern must be a non-empty regex or list of regexes, "
                             f"got {self.probe_pattern!r}")


@dataclass(frozen=True)
class ProbeSlice:
    """Which part of the full weight a tensor-parallel shard holds (offsets into the full dimensions).

    Column-parallel linear: ``out_offset``/``out_full`` set (each shard has rows of W, the full input).
    Row-parallel linear: ``in_offset``/``in_full`` set (each shard has columns of W and its input slice).
    ``None`` for a full dimension means "not sharded".
    """

    out_offset: int = 0
    out_full: int | None = None
    in_offset: int = 0
    in_full: int | None = None


def partition_slice(module: nn.Module, weight: torch.Tensor) -> ProbeSlice:
    """The part of the full weight this tensor-parallel shard holds, read off Megatron's partition marks.

    A sharded weight carries ``tensor_model_parallel`` (or DeepSpeed's ``model_parallel``) and
    ``partition_dim`` (0: output rows, column-parallel; 1: input columns, row-parallel) with contiguous
    shards (``partition_stride`` 1); the module keeps the full ``out_features`` / ``in_features`` (nn.Linear's
    names) and the group it is sharded over as ``tp_group`` (None: the default group). Shard r of P holds
    [r * local, (r + 1) * local). A column-parallel layer that gathers its output (``gather_output``) shows
    the hooks the full output, so it is described as unsharded, as before.
    """
    if not (getattr(weight, "tensor_model_parallel", False) or getattr(weight, "model_parallel", False)):
        return ProbeSlice()
    dim = int(weight.partition_dim)
    if getattr(weight, "partition_stride", 1) != 1:
        raise ValueError(f"probe weight with partition_stride={weight.partition_stride}: only contiguous "
                         f"shards (stride 1) are one slice of the full weight")
    if dim == 0 and getattr(module, "gather_output", False):
        return ProbeSlice()
    full_name = "out_features" if dim == 0 else "in_features"
    if not hasattr(module, full_name):
        raise ValueError(f"a probe sharded along dim {dim} needs its module's full size as {full_name!r}, or "
                         f"an explicit ProbeSlice (GradientAlignment(slices=...))")
    full = int(getattr(module, full_name))
    local = int(weight.shape[dim])
    group = getattr(module, "tp_group", None)
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank(group) if initialized else 0
    size = torch.distributed.get_world_size(group) if initialized else 1
    assert local * size == full, f"shard of {local} x {size} ranks != full size {full} (partition_dim {dim})"
    if dim == 0:
        return ProbeSlice(out_offset=rank * local, out_full=full)
    return ProbeSlice(in_offset=rank * local, in_full=full)


@dataclass
class _MicroBatch:
    """Domain bookkeeping of one micro-batch, shared by all probes; captured by each forward hook."""

    shape: tuple[int, ...]  # leading shape the probe inputs must have: (B, T) or (T, B)
    order: torch.Tensor  # (N_valid,) token indices (flattened in probe-input order) sorted by domain
    segments: list[tuple[int, int, int]]  # (domain, start, end) into ``order``
    grad_scale: float


class _Probe:
    def __init__(self, name: str, module: nn.Module, weight: torch.Tensor, slice_: ProbeSlice):
        self.name = name
        self.module = module
        self.out_local, self.in_local = int(weight.shape[0]), int(weight.shape[1])
        self.slice = slice_
        self.out_full = slice_.out_full if slice_.out_full is not None else self.out_local
        self.in_full = slice_.in_full if slice_.in_full is not None else self.in_local
        if slice_.out_offset < 0 or slice_.out_offset + self.out_local > self.out_full:
            raise ValueError(f"ProbeSlice for {name}: out slice [{slice_.out_offset}, +{self.out_local}) "
                             f"does not fit in out_full={self.out_full}")
        if slice_.in_offset < 0 or slice_.in_offset + self.in_local > self.in_full:
            raise ValueError(f"ProbeSlice for {name}: in slice [{slice_.in_offset}, +{self.in_local}) "
                             f"does not fit in in_full={self.in_full}")
        self.r_out: torch.Tensor | None = None  # (out_local, m_out) rows of the full R_out
        self.r_in: torch.Tensor | None = None  # (in_local, m_in)
        self.stats: torch.Tensor | None = None  # exact (K, out_full, in_full) | sketch (K, m_out, m_in)
        self.deferred: deque[_MicroBatch] = deque()  # reentrant-checkpoint first passes awaiting recompute
        self.handle: Any = None


def _canonical(name: str) -> str:
    return _WRAPPER_PREFIX.sub("", name)


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    w = getattr(module, "weight", None)
    return w if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def _count_layers(model: nn.Module) -> int | None:
    indices = [int(m.group(1)) for n, _ in model.named_modules() if (m := _LAYER_INDEX.search(n))]
    return max(indices) + 1 if indices else None


def _resolve_negative(pattern: str, num_layers: int | None) -> str:
    def sub(m: re.Match[str]) -> str:
        if num_layers is None:
            raise ValueError(f"probe pattern {pattern!r} uses a negative layer index but the model has no "
                             "'layers.N.' module names; set AlignmentConfig.num_layers")
        index = num_layers - int(m.group(1))
        return str(index) if index >= 0 else "(?!)"  # deeper than the model: this alternative never matches

    return _NEGATIVE_INDEX.sub(sub, pattern)


def resolve_probes(model: nn.Module, pattern: str | Sequence[str], num_layers: int | None = None) -> list[str]:
    """Module names (model order, no duplicates) of the 2-D-weight modules selected by ``pattern``.

    See ``AlignmentConfig`` for the syntax. Raises ValueError listing candidate names if nothing matches.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    modules = {n: m for n, m in model.named_modules() if _weight_of(m) is not None}
    exact = {p for p in patterns if p in modules}
    layers = num_layers if num_layers is not None else _count_layers(model)
    regexes = [re.compile(_resolve_negative(p, layers)) for p in patterns if p not in exact]
    names = [n for n in modules if n in exact or any(r.search(n) for r in regexes)]
    if not names:
        candidates = [n for n in modules if "dense" in n or "proj" in n] or list(modules)
        raise ValueError(f"probe pattern {pattern!r} matches no module with a 2-D weight; candidates: "
                         f"{candidates[:8]}{' ...' if len(candidates) > 8 else ''}")
    return names


def _sketch_matrix(seed: int, name: str, which: str, rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) random projection with E[R Rᵀ] = I, drawn on the CPU from (seed, canonical name, which),
    so it is the same on every rank.

    Scaled orthonormal columns: R = sqrt(rows / r) Q with Q the first r = min(rows, cols) columns of a Haar
    orthogonal matrix (QR of a Gaussian, signs fixed), zero-padded to ``cols``. Unbiased like i.i.d.
    N(0, 1/cols), with lower variance (no two columns overlap), and exact (R Rᵀ = I) once cols >= rows.
    """
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + zlib.crc32(f"{_canonical(name)}|{which}".encode())) % (2**63))
    r = min(rows, cols)
    q, tri = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(tri))[None, :]  # sign fix: makes Q Haar-distributed
    out = torch.zeros(rows, cols, dtype=torch.float64)
    out[:, :r] = q * math.sqrt(rows / r)
    return out.float()


def _project(x_N: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(N, d) @ (d, m) in fp32, in row chunks so a bf16 input is never copied to fp32 whole."""
    if x_N.dtype == torch.float32:
        return x_N @ r
    out = torch.empty(x_N.shape[0], r.shape[1], dtype=torch.float32, device=x_N.device)
    for s in range(0, x_N.shape[0], _PROJECTION_CHUNK_TOKENS):
        out[s:s + _PROJECTION_CHUNK_TOKENS] = x_N[s:s + _PROJECTION_CHUNK_TOKENS].float() @ r
    return out


class GradientAlignment:
    """Hooks on probe layers that accumulate per-domain weight-gradient statistics (exact or sketched)."""

    def __init__(self, model: nn.Module, num_domains: int, cfg: AlignmentConfig,
                 device: torch.device | str | None = None, slices: Mapping[str, ProbeSlice] | None = None):
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.cfg = cfg
        self.num_domains = num_domains
        self.probe_names: list[str] = resolve_probes(model, cfg.probe_pattern, cfg.num_layers)
        named = dict(model.named_modules())
        slices = dict(slices or {})
        unknown = set(slices) - set(self.probe_names)
        if unknown:
            raise ValueError(f"slices given for {sorted(unknown)}, which are not probes {self.probe_names}")
        self._probes: list[_Probe] = []
        for name in self.probe_names:
            module = named[name]
            weight = _weight_of(module)
            assert weight is not None
            slice_ = (slices.get(name) or getattr(module, "alignment_slice", None)
                      or partition_slice(module, weight))
            self._probes.append(_Probe(name, module, weight, slice_))
        self.device = torch.device(device) if device is not None else _weight_of(self._probes[0].module).device
        for p in self._probes:
            if cfg.mode == "sketch":
                # Draw the FULL R and take this shard's rows, so tensor-parallel shards sum to the full sketch.
                p.r_out = _sketch_matrix(cfg.seed, p.name, "out", p.out_full, cfg.sketch_out)[
                    p.slice.out_offset:p.slice.out_offset + p.out_local].to(self.device)
                p.r_in = _sketch_matrix(cfg.seed, p.name, "in", p.in_full, cfg.sketch_in)[
                    p.slice.in_offset:p.slice.in_offset + p.in_local].to(self.device)
                shape = (num_domains, cfg.sketch_out, cfg.sketch_in)
            else:
                shape = (num_domains, p.out_full, p.in_full)
            p.stats = torch.zeros(shape, dtype=torch.float32, device=self.device)
            p.handle = p.module.register_forward_hook(self._make_forward_hook(p))
        self._current: _MicroBatch | None = None

    # ------------------------------------------------------------------ trainer API
    def begin_micro_batch(self, domain_BT: torch.Tensor, grad_scale: float) -> None:
        """Domain id of every token of the coming micro-batch (B, T); ids < 0 are ignored tokens.

        ``grad_scale`` turns the backward's δ into the gradient of the SUM of per-token losses, e.g.
        num_tokens_mb * grad_accum_steps / loss_scale for loss = mean / accum * loss_scale.
        """
        if not isinstance(domain_BT, torch.Tensor) or domain_BT.dim() != 2:
            raise ValueError(f"domain_BT must be a 2-D (B, T) tensor of domain ids, got "
                             f"{getattr(domain_BT, 'shape', type(domain_BT))}")
        if not math.isfinite(grad_scale) or grad_scale <= 0:
            raise ValueError(f"grad_scale must be a finite positive number, got {grad_scale}")
        dom = domain_BT.detach().to("cpu", torch.long)
        if self.cfg.sequence_first:
            dom = dom.t()
        dom_N = dom.reshape(-1)
        if int(dom_N.max()) >= self.num_domains:
            raise ValueError(f"domain_BT holds id {int(dom_N.max())} but num_domains={self.num_domains}")
        valid = dom_N >= 0
        idx = torch.nonzero(valid).squeeze(1)
        dom_valid = dom_N[idx]
        perm = torch.argsort(dom_valid, stable=True)
        counts = torch.bincount(dom_valid, minlength=self.num_domains).tolist()
        segments, start = [], 0
        for k, c in enumerate(counts):
            if c:
                segments.append((k, start, start + c))
                start += c
        self._current = _MicroBatch(shape=tuple(dom.shape), order=idx[perm].to(self.device),
                                    segments=segments, grad_scale=float(grad_scale))

    def packed(self) -> torch.Tensor:
        """Flat fp32 tensor of all statistics (probe order); all-reduce (sum) it across the whole job."""
        return torch.cat([p.stats.reshape(-1) for p in self._probes])

    def packed_numel(self) -> int:
        return sum(p.stats.numel() for p in self._probes)

    def probe_weights(self) -> list[torch.Tensor]:
        """The probe layers' weight matrices: ``autograd.grad(loss, probe_weights())`` runs the hooks
        for a forward whose gradient must reach the statistics but not the parameters' ``.grad``."""
        return [_weight_of(p.module) for p in self._probes]

    def gram(self, packed: torch.Tensor, token_count_K: Any) -> np.ndarray:
        """(K, K) float64 Σ_probes ⟨g_i, g_j⟩ with g_k = S_k / n_k; rows/cols of absent domains are 0."""
        if packed.numel() != self.packed_numel():
            raise ValueError(f"packed has {packed.numel()} elements, expected packed_numel()={self.packed_numel()}")
        return packed_gram(packed, token_count_K, self.num_domains, [p.stats.numel() for p in self._probes])

    def cross_gram(self, packed: torch.Tensor, token_count_K: Any, other: torch.Tensor, other_count_K: Any
                   ) -> np.ndarray:
        """(K, K) Σ_probes ⟨g_i, g'_j⟩ between two reduced statistics (e.g. this step's and the last).

        The sketches R are fixed per probe, so ⟨S_i, S'_j⟩ estimates ⟨G_i, G'_j⟩ without bias; with the
        two steps' samples independent, the diagonal estimates ‖g_i‖² free of the same-step self term's
        sampling noise (which dominates W_i at a few sequences per domain)."""
        sizes = [p.stats.numel() for p in self._probes]
        return packed_cross_gram(packed, token_count_K, other, other_count_K, self.num_domains, sizes)

    def reset(self) -> None:
        """Zero the statistics and forget open micro-batches: the next step starts here."""
        for p in self._probes:
            p.stats.zero_()
            p.deferred.clear()
        self._current = None

    def remove(self) -> None:
        """Unregister all hooks (statistics stay readable)."""
        for p in self._probes:
            if p.handle is not None:
                p.handle.remove()
                p.handle = None
            p.deferred.clear()
        self._current = None

    def memory_bytes(self) -> int:
        """Persistent bytes: statistics + R matrices. Saved activations add, per probe and micro-batch
        until its backward, tokens x m_in x 4 (sketch) or nothing new (exact: a view of the input)."""
        total = 0
        for p in self._probes:
            for t in (p.stats, p.r_out, p.r_in):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def state_dict(self) -> dict[str, Any]:
        """Config, probe names and the statistics accumulated since the last reset() (R follows from seed)."""
        return {"config": asdict(self.cfg), "num_domains": self.num_domains, "probe_names": list(self.probe_names),
                "packed": self.packed().cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("config", "num_domains", "probe_names"):
            if state[key] != mine[key]:
                raise ValueError(f"alignment state {key} {state[key]!r} does not match this run's {mine[key]!r}; "
                                 "resume with the same alignment config and model")
        offset = 0
        for p in self._probes:
            p.stats.copy_(state["packed"][offset:offset + p.stats.numel()].view_as(p.stats))
            offset += p.stats.numel()

    # ------------------------------------------------------------------ hooks
    def _make_forward_hook(self, probe: _Probe):
        def forward_hook(module: nn.Module, args: tuple, output: Any) -> None:
            y = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(y, torch.Tensor):
                return
            if not y.requires_grad:
                # A no_grad forward in training mode with an open micro-batch is the first pass of
                # reentrant activation checkpointing; its recompute (inside the backward) pops this.
                if not torch.is_grad_enabled() and module.training and self._current is not None:
                    probe.deferred.append(self._current)
                return
            mb = self._current
            # Inside a backward (a graph task is running) a forward is an activation-checkpoint recompute.
            if torch._C._current_graph_task_id() != -1:
                if not probe.deferred:
                    return  # non-reentrant recompute: the original output already carries our hook
                mb = probe.deferred.popleft()
            if mb is None:
                raise RuntimeError(f"probe {probe.name} ran a forward with gradients enabled but "
                                   "begin_micro_batch() was not called since the last reset(); call "
                                   "begin_micro_batch(domain_BT, grad_scale) before each training forward, "
                                   "or run evaluation under torch.no_grad()")
            x = args[0]
            if tuple(x.shape[:-1]) != mb.shape or x.shape[-1] != probe.in_local:
                raise ValueError(f"probe {probe.name} input has shape {tuple(x.shape)} but begin_micro_batch "
                                 f"announced tokens {mb.shape} (set AlignmentConfig.sequence_first for (T, B) "
                                 "layouts) and the layer has in_features={probe.in_local}")
            x_N = x.detach().reshape(-1, probe.in_local)
            # sketch: keep only (N, m_in) fp32; exact: keep a view of the input (no copy, cast later).
            saved = [_project(x_N, probe.r_in) if probe.r_in is not None else x_N]

            def grad_hook(grad: torch.Tensor) -> None:
                if not saved:
                    raise RuntimeError(f"probe {probe.name}: a second backward through the same graph "
                                       "(retain_graph) is not supported by GradientAlignment")
                self._accumulate(probe, mb, saved.pop(), grad)

            y.register_hook(grad_hook)

        return forward_hook

    def _accumulate(self, probe: _Probe, mb: _MicroBatch, saved_N: torch.Tensor, grad: torch.Tensor) -> None:
        d_N = grad.detach().reshape(-1, probe.out_local)
        if probe.r_out is not None:  # sketch: gather the thin projections
            d_sel = _project(d_N, probe.r_out).index_select(0, mb.order)  # (N_valid, m_out)
            x_sel = saved_N.index_select(0, mb.order)  # (N_valid, m_in)
            target = probe.stats
        else:
            d_sel = d_N.index_select(0, mb.order).float()  # (N_valid, out_local)
            x_sel = saved_N.index_select(0, mb.order).float()  # (N_valid, in_local)
            s = probe.slice
            target = probe.stats[:, s.out_offset:s.out_offset + probe.out_local,
                                 s.in_offset:s.in_offset + probe.in_local]  # this shard's block of G
        for k, start, end in mb.segments:
            target[k].addmm_(d_sel[start:end].T, x_sel[start:end], alpha=mb.grad_scale)


def packed_gram(packed: torch.Tensor, token_count_K: Any, num_domains: int,
                block_numels: Sequence[int]) -> np.ndarray:
    """Gram matrix of packed statistics laid out as consecutive per-probe blocks of (K, ...) values.

    (K, K) float64 Σ_blocks ⟨g_i, g_j⟩ with g_k = S_k / n_k (n_k: domain k's token count); rows and
    columns of domains with no tokens are 0.
    """
    return packed_cross_gram(packed, token_count_K, packed, token_count_K, num_domains, block_numels)


def packed_cross_gram(packed: torch.Tensor, token_count_K: Any, other: torch.Tensor, other_count_K: Any,
                      num_domains: int, block_numels: Sequence[int]) -> np.ndarray:
    """``packed_gram`` between two packed statistics of the same layout: (K, K) Σ_blocks ⟨g_i, g'_j⟩."""
    def per_domain(p: torch.Tensor, counts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if p.numel() != sum(block_numels):
            raise ValueError(f"packed has {p.numel()} elements, the blocks {sum(block_numels)}")
        n_K = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64).reshape(-1)
        if n_K.shape != (num_domains,) or (n_K < 0).any():
            raise ValueError(f"token_count_K must be {num_domains} non-negative counts, got {n_K}")
        return p.detach().to("cpu", torch.float64), torch.from_numpy(np.where(n_K > 0, 1.0 / np.maximum(n_K, 1.0), 0.0))

    (a, inv_a), (b, inv_b) = per_domain(packed, token_count_K), per_domain(other, other_count_K)
    gram_KK = torch.zeros(num_domains, num_domains, dtype=torch.float64)
    offset = 0
    for numel in block_numels:
        ga_KF = a[offset:offset + numel].reshape(num_domains, -1) * inv_a[:, None]
        gb_KF = b[offset:offset + numel].reshape(num_domains, -1) * inv_b[:, None]
        gram_KK += ga_KF @ gb_KF.T
        offset += numel
    return gram_KK.numpy()


def default_state_probes(model: nn.Module, count: int = 9) -> list[str]:
    """``count`` MLP output projections spread evenly over depth (AC-ODM's state, docs/methods.md).

    With fewer layers than ``count`` some layers repeat, so the state keeps its fixed size (the policy
    transfers between model sizes only if the feature vector has the same length).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.dense_4h_to_h$")
    by_layer = sorted((int(m.group(1)), n) for n, mod in model.named_modules()
                      if (m := pattern.search(n)) and _weight_of(mod) is not None)
    if not by_layer:
        raise ValueError("default_state_probes: model has no 'layers.N.mlp.dense_4h_to_h' module; pass probe "
                         "names explicitly")
    picks = np.round(np.linspace(0, len(by_layer) - 1, count)).astype(int)
    return [by_layer[i][1] for i in picks]


def probe_weight_norms(model: nn.Module, probes: str | Sequence[str], squared: bool = False) -> torch.Tensor:
    """(P,) fp32 Frobenius norms of the probe weights, in the order given (names may repeat).

    ``probes``: a pattern (see AlignmentConfig) or a list of module names/patterns. Under tensor
    parallelism pass ``squared=True``: each shard's squared norm is a partial sum to all-reduce, then sqrt.
    """
    named = dict(model.named_modules())
    if isinstance(probes, str):
        names = resolve_probes(model, probes)
    else:
        names = []
        for p in probes:
            names.extend([p] if p in named else resolve_probes(model, p))
    out = []
    with torch.no_grad():
        for n in names:
            w = _weight_of(named[n])
            if w is None:
                raise ValueError(f"probe {n!r} has no 2-D weight")
            out.append(w.detach().float().pow(2).sum().cpu())
    sq = torch.stack(out)
    return sq if squared else sq.sqrt()
