"""The pipeline's loss function (last stage): the mean token loss for the backward, per-domain sums on the side."""

from __future__ import annotations

from collections.abc import Callable

import torch

from neox.model.gpt_neox import add_domain_sums, domain_sums_numel, per_token_loss


class DomainLoss:
    """Pipeline loss_fn: mean next-token loss for backward, per-domain sums on the side.

    Accumulates in fp64 on the logits' device: loss_sum_K, token_count_K, sequence_count_K and a
    non-finite flag (the same quantities the trainer's step statistics keep). ``on_token_loss``, if
    given, is called with (token_loss_BT detached, domain_B, labels_BT) for every micro-batch, e.g. to
    feed the trainer's statistics object directly. Evaluation forwards (``engine.eval_batch``) also pass
    through here: ``reset()`` before the training step.
    """

    def __init__(self, num_domains: int,
                 on_token_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
                 token_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = per_token_loss):
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_domains = num_domains
        self.on_token_loss = on_token_loss
        self.token_loss = token_loss  # (logits, labels) -> (B, T); vocab-parallel under tensor parallelism
        self._sums: torch.Tensor | None = None  # (3K + 1,) fp64: loss, tokens, sequences, non-finite

    def __call__(self, logits_BTV: torch.Tensor, labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if not (isinstance(labels, (tuple, list)) and len(labels) == 2):
            raise ValueError("pipeline labels must be the tuple (labels_BT, domain_B); make the data iterator "
                             "yield ((input_ids_BT, domain_B), (labels_BT, domain_B))")
        labels_BT, domain_B = labels
        token_loss_BT = self.token_loss(logits_BTV, labels_BT)  # (B, T) fp32
        self._accumulate(token_loss_BT.detach(), domain_B)
        if self.on_token_loss is not None:
            self.on_token_loss(token_loss_BT.detach(), domain_B, labels_BT)
        return token_loss_BT.mean()

    @torch.no_grad()
    def _accumulate(self, token_loss_BT: torch.Tensor, domain_B: torch.Tensor) -> None:
        K = self.num_domains
        if self._sums is None:
            self._sums = torch.zeros(domain_sums_numel(K), dtype=torch.float64, device=token_loss_BT.device)
        domain_B = domain_B.to(token_loss_BT.device, torch.long)
        if int(domain_B.min()) < 0 or int(domain_B.max()) >= K:
            raise ValueError(f"domain ids must lie in [0, {K}), got {domain_B.tolist()}")
        add_domain_sums(self._sums, K, token_loss_BT, domain_B)

    def totals(self) -> dict[str, torch.Tensor]:
        """Per-domain sums since the last reset (zeros if no micro-batch passed): loss_sum (K,),
        token_count (K,), sequence_count (K,) fp64 and nonfinite (scalar count of micro-batches)."""
        K = self.num_domains
        s = self._sums if self._sums is not None else torch.zeros(domain_sums_numel(K), dtype=torch.float64)
        return {"loss_sum": s[0:K].clone(), "token_count": s[K:2 * K].clone(),
                "sequence_count": s[2 * K:3 * K].clone(), "nonfinite": s[3 * K].clone()}

    def reset(self) -> None:
        if self._sums is not None:
            self._sums.zero_()
