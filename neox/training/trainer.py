"""The trainer: bookkeeping around one DeepSpeed engine. The loop is ``fit``; the math of a step is
``train_step``; mixing, evaluation, metrics and checkpoints are callbacks (neox/training/callbacks.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from neox.config import ExperimentConfig, save_config
from neox.data import MicroBatchLoader, MixturePlan, ValidationSet, open_domains
from neox.model.gpt_neox import GPTNeoX, init_weights, per_token_loss
from neox.parallel.topology import Topology
from neox.training import checkpoint as ckpt_io
from neox.training.callbacks import (Callback, CheckpointCallback, EvalCallback, MetricsCallback,
                                     MixingCallback)
from neox.training.distributed import init_distributed
from neox.training.engine import build_engine
from neox.training.metrics import MetricsWriter
from neox.training.mixing import build_run_mixer, build_statistics
from neox.training.stats import ReducedStats


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        env = init_distributed(cfg.device)
        self.device = env.device
        dp_size = cfg.check_world_size(env.world_size)
        self.topology = Topology.build(cfg.parallel.pipe, cfg.parallel.tensor, env.world_size, env.rank)
        assert self.topology.dp_size == dp_size
        self.run_dir = Path(cfg.logging.run_dir)
        self.total_steps = cfg.schedule.train_steps
        self.step = 0
        self.tokens = 0
        self.nonfinite_in_row = 0
        self.skipped_steps = 0

        data = cfg.data
        tokenizer_sha = None
        if data.tokenizer:
            if not Path(data.tokenizer).is_file():
                raise FileNotFoundError(f"data.tokenizer={data.tokenizer} does not exist; point it at the "
                                        f"tokenizer.json the data was preprocessed with, or set it to null")
            from neox.data.tokenizer import file_sha256

            tokenizer_sha = file_sha256(data.tokenizer)  # the token files must come from this tokenizer
        opened = dict(seq_len_tokens=data.seq_len_tokens, seed=cfg.seed, vocab_size=cfg.model.vocab_size,
                      expected_tokenizer_sha256=tokenizer_sha)
        self.corpus = open_domains(data.path, split=data.train_split, domains=data.domains, **opened)
        self.domains = list(self.corpus.names)
        self.num_domains = len(self.domains)
        val_corpus = open_domains(data.path, split=data.val_split, domains=self.domains, **opened)
        self.val = ValidationSet(val_corpus, samples_per_domain=cfg.eval.val_samples_per_domain,
                                 micro_batch_sequences=cfg.eval.micro_batch_sequences or data.micro_batch_sequences)

        self.mixer = build_run_mixer(cfg, self.domains, self.corpus.manifest)
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        model = GPTNeoX(cfg.model)
        init_weights(model, cfg.model)
        self.engine, self.optimizer, self.scheduler = build_engine(cfg, model, dp_size, self.device)
        self.statistics = build_statistics(cfg, self.mixer.needs, self.engine.module, self.num_domains, self.device)
        self._state_probes = None  # names of the probe matrices whose norms feed the AC-ODM state

        self.plan = MixturePlan(samples_per_epoch=[ds.num_samples for ds in self.corpus.datasets],
                                global_batch_sequences=data.global_batch_sequences, seed=cfg.seed,
                                min_samples_per_domain=data.min_samples_per_domain)
        self.loader = MicroBatchLoader(self.corpus, self.plan, dp_rank=self.topology.dp_rank, dp_size=dp_size,
                                       micro_batch_sequences=data.micro_batch_sequences)
        self.weights = np.asarray(self.mixer.weights(), dtype=np.float64)
        self.plan.set_weights(self.weights)

        self.checkpointer = CheckpointCallback()
        self.callbacks: list[Callback] = [MixingCallback(), EvalCallback(), MetricsCallback(), self.checkpointer]
        self.metrics: MetricsWriter | None = None
        self._prepare_run_dir()

    # ------------------------------------------------------------------------------------------ setup

    def _prepare_run_dir(self) -> None:
        cfg = self.cfg
        resume = ckpt_io.find_resume_checkpoint(cfg, self.run_dir)
        if self.topology.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for partial in ckpt_io.cleanup_partial(self.run_dir):
                self.console(f"removed incomplete checkpoint {partial} (the run stopped while writing it)")
            if resume is None and (self.run_dir / "metrics.jsonl").exists():
                raise FileExistsError(
                    f"run directory {self.run_dir} already holds metrics.jsonl; resume it with "
                    f"checkpoint.resume=auto or choose another logging.run_dir")
            save_config(cfg, self.run_dir / "config.yml")
            if cfg.data.tokenizer:
                shutil.copyfile(cfg.data.tokenizer, self.run_dir / "tokenizer.json")
            self.metrics = MetricsWriter(self.run_dir, cfg.logging, cfg.to_dict())
        if dist.is_initialized():
            dist.barrier()
        if resume is not None:
            ckpt_io.load_checkpoint(self, resume)
            self.console(f"resumed from {resume} at step {self.step}")
        if self.metrics is not None and self.metrics.is_new:
            self.metrics.write(self._run_record())

    def _run_record(self) -> dict[str, Any]:
        manifest = self.corpus.manifest
        manifest_sha = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        fingerprint = hashlib.sha256()
        for tokens, domain in self.val.batches(dp_rank=0, dp_size=1):
            fingerprint.update(tokens.numpy().tobytes())
            fingerprint.update(domain.numpy().tobytes())
        return {"kind": "run", "run_name": self.cfg.name, "method": self.cfg.mixing.method, "domains": self.domains,
                "data_path": str(self.cfg.data.path), "manifest_sha256": manifest_sha,
                "tokenizer_sha256": manifest.get("tokenizer", {}).get("sha256"),
                "val_samples_per_domain": self.cfg.eval.val_samples_per_domain,
                "val_fingerprint": fingerprint.hexdigest(), "seed": self.cfg.seed,
                "world_size": self.topology.world_size}

    def console(self, message: str) -> None:
        if self.topology.is_main:
            print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.step < self.total_steps:
            started = time.perf_counter()
            weights_in_force, lr = self.weights, self.scheduler.get_last_lr()[0]
            stats = self.train_step(self.loader.next_step())
            self.step += 1
            step_tokens = self.cfg.data.global_batch_sequences * self.cfg.data.seq_len_tokens
            self.tokens += step_tokens
            record = self._step_record(stats, weights_in_force, lr, step_tokens / (time.perf_counter() - started))
            for cb in self.callbacks:
                cb.post_step(self, stats, record)
            if self.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
                self.checkpointer.save_now(self)  # the weights are the last good ones: skipped steps changed nothing
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_row} optimizer steps in a row had a non-finite loss (step {self.step}); "
                    f"stopping. The last good state is saved in {self.run_dir / 'checkpoints'}. Lower "
                    f"optimizer.lr, enable clipping (optimizer.grad_clip) or check the data, then resume with "
                    f"checkpoint.resume=auto")
        for cb in self.callbacks:
            cb.on_fit_end(self)
        if self.metrics is not None:
            self.metrics.close()

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> ReducedStats:
        """Forward/backward over this rank's micro-batches, one all-reduce of the statistics, one update."""
        engine, stats = self.engine, self.statistics
        grad_accum = len(micro_batches)
        stats.reset()
        reduced = None
        for i, (tokens_BS1, domain_B) in enumerate(micro_batches):
            tokens_BS1, domain_B = tokens_BS1.to(self.device), domain_B.to(self.device)
            inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
            # delta at a probe layer's output is d(mean micro-batch loss / grad_accum)/dy; this factor makes
            # it the gradient of the SUM of per-token losses, which the statistics are kept in.
            stats.begin_micro_batch(domain_B, labels_BS.shape[1], grad_scale=labels_BS.numel() * grad_accum
                                    / self._loss_scale())
            token_loss_BS = per_token_loss(engine(inputs_BS), labels_BS)
            stats.add_losses(token_loss_BS.detach(), domain_B, inputs_BS, labels_BS)
            engine.backward(token_loss_BS.mean())
            if i == grad_accum - 1:
                # After the last backward, before the update: one collective for every statistic, and the
                # whole job agrees on whether this step may be applied.
                reduced = stats.reduce(self.topology.world_group)
                self.optimizer.skip_next = reduced.nonfinite
            engine.step()
        assert reduced is not None
        if reduced.nonfinite:
            self.nonfinite_in_row += 1
            self.skipped_steps += 1
        else:
            self.nonfinite_in_row = 0
        return reduced

    def _loss_scale(self) -> float:
        if self.engine.fp16_enabled():
            return float(self.engine.optimizer.cur_scale)
        return 1.0

    def _step_record(self, stats: ReducedStats, weights: np.ndarray, lr: float, tokens_per_s: float) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": "train", "step": self.step, "tokens": self.tokens,
                                  "loss": stats.mean_loss, "lr": lr,
                                  "tokens_per_s": tokens_per_s, "skipped_steps": self.skipped_steps}
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_loss = stats.loss_sum / stats.token_count
        for k, name in enumerate(self.domains):
            record[f"weights/{name}"] = float(weights[k])
            record[f"train_loss/{name}"] = float(mean_loss[k]) if stats.token_count[k] else None
        return record

    def set_weights(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.plan.set_weights(self.weights)

    def probe_norms(self) -> np.ndarray:
        from acodm.alignment import default_state_probes, probe_weight_norms

        module = self.engine.module
        if self._state_probes is None:
            # AC-ODM's state spec fixes how many probe matrices it reads (acodm.num_probe_layers, or the
            # exported actor's count for a frozen run).
            self._state_probes = default_state_probes(module, count=self.mixer.spec.num_probes)
        return probe_weight_norms(module, self._state_probes).double().cpu().numpy()

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Per-domain validation loss and perplexity on the fixed validation set, summed over ranks."""
        K = self.num_domains
        sums = torch.zeros(2 * K, dtype=torch.float64, device=self.device)
        self.engine.eval()
        # The probe hooks ignore forwards without gradients, so evaluation needs no special handling.
        for tokens_BS1, domain_B in self.val.batches(dp_rank=self.topology.dp_rank, dp_size=self.topology.dp_size):
            tokens_BS1, domain_B = tokens_BS1.to(self.device), domain_B.to(self.device)
            loss_BS = per_token_loss(self.engine(tokens_BS1[:, :-1]), tokens_BS1[:, 1:]).double()
            sums[:K].index_add_(0, domain_B, loss_BS.sum(dim=1))
            sums[K:].index_add_(0, domain_B, torch.full_like(loss_BS[:, 0], loss_BS.shape[1]))
        self.engine.train()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        loss = (sums[:K] / sums[K:].clamp_min(1)).cpu().numpy()
        ppl = np.exp(loss)
        ref = self._reference_weights()
        out: dict[str, float] = {}
        for k, name in enumerate(self.domains):
            out[f"val_loss/{name}"] = float(loss[k])
            out[f"val_ppl/{name}"] = float(ppl[k])
        out["val_loss/mean"] = float(loss.mean())
        out["val_ppl/mean"] = float(ppl.mean())  # unweighted mean over domains, as the paper reports
        out["val_ppl/weighted"] = float((ref * ppl).sum())
        return out

    def _reference_weights(self) -> np.ndarray:
        ref = self.cfg.data.reference_weights
        if not ref:
            return np.full(self.num_domains, 1.0 / self.num_domains)
        w = np.asarray([ref.get(d, 0.0) for d in self.domains], dtype=np.float64)
        return w / w.sum() if w.sum() > 0 else np.full(self.num_domains, 1.0 / self.num_domains)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "nonfinite_in_row": self.nonfinite_in_row,
                "skipped_steps": self.skipped_steps, "weights": self.weights.tolist(), "domains": self.domains,
                "rng": ckpt_io.rng_state()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["domains"] != self.domains:
            raise ValueError(f"checkpoint domains {sd['domains']} differ from this run's {self.domains}")
        self.step, self.tokens = sd["step"], sd["tokens"]
        self.nonfinite_in_row, self.skipped_steps = sd["nonfinite_in_row"], sd["skipped_steps"]
        self.weights = np.asarray(sd["weights"], dtype=np.float64)
        ckpt_io.set_rng_state(sd["rng"])

