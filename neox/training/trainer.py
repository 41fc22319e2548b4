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

from neox.config import ConfigError, ExperimentConfig, save_config
from neox.data import MicroBatchLoader, MixturePlan, ValidationSet, gather_samples, open_domains, read_manifest
from neox.model.gpt_neox import (GPTNeoX, add_domain_sums, check_attention_backend, compile_layers, domain_sums_numel,
                                 init_weights, per_token_loss)
from neox.parallel.topology import Topology
from neox.training import checkpoint as ckpt_io
from neox.training.callbacks import (Callback, CallbackStates, CheckpointCallback, EvalCallback, MetricsCallback,
                                     MixingCallback)
from neox.training.distributed import init_distributed
from neox.training.engine import build_engine
from neox.training.metrics import METRICS_FILE, MetricsWriter
from neox.training.signals import StopSignals, TrainingInterrupted
from neox.training.mixing import Mixing, build_run_mixer, build_statistics
from neox.training.pipeline_step import PipelineStep, loss_scale, pipeline_items
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
        check_attention_backend(cfg.model, self.device)
        if cfg.model.compile and self.topology.is_model_parallel:
            raise ConfigError("model.compile needs parallel.pipe=1 and parallel.tensor=1 (pipeline stages and "
                              "tensor-parallel layers are not compiled); set model.compile: false")
        if cfg.model.activation_checkpointing and cfg.parallel.pipe > 1:
            raise ConfigError("model.activation_checkpointing is for parallel.pipe=1; a pipeline checkpoints with "
                              "parallel.activation_checkpoint_interval")
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
            from neox.files import file_sha256

            tokenizer_sha = file_sha256(data.tokenizer)  # the token files must come from this tokenizer
        opened = dict(seq_len_tokens=data.seq_len_tokens, seed=cfg.seed, vocab_size=cfg.model.vocab_size,
                      expected_tokenizer_sha256=tokenizer_sha)
        # Default: the domains of the train split (a held-out target domain has no train data).
        train_domains = data.domains or list(read_manifest(data.path)["splits"].get(data.train_split, {})) or None
        self.corpus = open_domains(data.path, split=data.train_split, domains=train_domains, **opened)
        self.domains = list(self.corpus.names)
        self.num_domains = len(self.domains)
        targets = cfg.mixing.target_domains
        # Target domains that are never trained on: evaluated, and (for mixers reading gradients) probed by
        # one extra micro-batch per step from mixing.target_split.
        self.target_only = [d for d in targets or [] if d not in self.domains]
        self.val_domains = self.domains + self.target_only
        self.target_index = [self.val_domains.index(d) for d in targets] if targets else list(range(self.num_domains))
        val_corpus = open_domains(data.path, split=data.val_split, domains=self.val_domains, **opened)
        self.val = ValidationSet(val_corpus, samples_per_domain=cfg.eval.val_samples_per_domain,
                                 micro_batch_sequences=cfg.eval.micro_batch_sequences or data.micro_batch_sequences)

        if self.topology.pipe > 1 and self.val.num_samples < dp_size:
            raise ConfigError(f"the validation set has {self.val.num_samples} sequences, fewer than the "
                              f"{dp_size} pipelines; raise eval.val_samples_per_domain")

        mixer = build_run_mixer(cfg, self.domains, self.corpus.manifest)
        self.target_corpus = None
        if self.target_only and mixer.needs.alignment:
            if self.topology.pipe > 1:
                raise ConfigError(f"mixing.target_domains {self.target_only} are not training domains; their "
                                  f"gradient probe needs parallel.pipe=1")
            self.target_corpus = open_domains(data.path, split=cfg.mixing.target_split, domains=self.target_only,
                                              **opened)
        self.domain_loss = None  # the pipeline's loss_fn (last stage), pipe > 1 only
        model = self._build_model()
        self.engine, self.optimizer, self.scheduler = build_engine(
            cfg, model, dp_size, self.device, mpu=self.topology.mpu if self.topology.pipe == 1 else None)
        # Statistics index the training domains, then the probed target-only domains (if any).
        self.num_stat_domains = self.num_domains + (len(self.target_only) if self.target_corpus else 0)
        statistics = build_statistics(cfg, mixer.needs, self.engine.module, self.num_stat_domains, self.device)
        self.mixing = Mixing(cfg, mixer, statistics, self.engine.module, self.topology, self.domains,
                             self.val_domains, self.device)
        self.pipeline_step = None  # pipe > 1: the step through engine.train_batch
        if self.topology.pipe > 1:
            self.pipeline_step = PipelineStep(self.engine, self.mixing, self.topology, self.optimizer,
                                              self.domain_loss, self.device)
        if cfg.model.compile:  # after the probes' hooks exist: the modules carrying them stay eager
            compile_layers(self.engine.module)

        self.plan = MixturePlan(samples_per_epoch=[ds.num_samples for ds in self.corpus.datasets],
                                global_batch_sequences=data.global_batch_sequences, seed=cfg.seed,
                                min_samples_per_domain=data.min_samples_per_domain)
        self.loader = MicroBatchLoader(self.corpus, self.plan, dp_rank=self.topology.dp_rank, dp_size=dp_size,
                                       micro_batch_sequences=data.micro_batch_sequences)
        self.plan.set_weights(self.mixing.weights)

        self.checkpointer = CheckpointCallback()
        self.callbacks: list[Callback] = [MixingCallback(self.mixing), EvalCallback(), MetricsCallback(),
                                          self.checkpointer]
        self.metrics: MetricsWriter | None = None
        self._prepare_run_dir()

    # ------------------------------------------------------------------------------------------ setup

    def _build_model(self) -> torch.nn.Module:
        """The whole model, this rank's tensor-parallel shard, or this rank's pipeline stage.

        Every layout starts from the same weights: the unsharded model initialised under the run's seed,
        then sharded or cut into stages, so a run's numbers do not depend on its layout.
        """
        cfg, topo = self.cfg, self.topology
        torch.manual_seed(cfg.seed)
        model = GPTNeoX(cfg.model)
        init_weights(model, cfg.model)
        if topo.pipe == 1 and topo.tensor > 1:
            from neox.model.tensor_parallel import shard_gpt_neox

            return shard_gpt_neox(model, topo.tensor_group)
        if topo.pipe > 1:
            from neox.model.domain_loss import DomainLoss
            from neox.model.pipeline import build_pipeline_module
            from neox.model.pipeline_checkpoint import load_hf_state_dict

            # vocab-parallel under tensor parallelism; its statistics hook is connected by PipelineStep
            self.domain_loss = DomainLoss(self.num_domains, token_loss=self._token_loss)
            module = build_pipeline_module(
                cfg.model, topology=topo.ds_topology(), loss_fn=self.domain_loss, seed=cfg.seed,
                partition_method=cfg.parallel.partition_method,
                activation_checkpoint_interval=cfg.parallel.activation_checkpoint_interval,
                dynamic_shape=True)  # evaluation batches differ from training ones (the last one is short)
            load_hf_state_dict(module, model.state_dict(), cfg.model.num_layers)
            topo.use_grid(module.mpu())
            if topo.tensor > 1:  # each stage's layers sharded over its tensor group; the loss is vocab-parallel
                from neox.model.tensor_parallel import shard_layers_in_place

                shard_layers_in_place(module, cfg.model, topo.tensor_group)
            return module
        return model

    def _prepare_run_dir(self) -> None:
        """Pick the checkpoint to resume (rank 0 decides: the newest verified one), load it, and only then
        write the run's config.yml and open metrics.jsonl, so a refused resume leaves the run as it was."""
        cfg = self.cfg
        choice: list[Any] = [None, None]  # (checkpoint, error) as rank 0 found them
        over = False  # resume=auto on a run stopped before its first checkpoint: it starts over
        if self.topology.is_main:
            for partial in ckpt_io.cleanup_partial(self.run_dir):
                self.console(f"removed incomplete checkpoint {partial} (the run stopped while writing it)")
            try:
                choice[0] = ckpt_io.find_resume_checkpoint(cfg, self.run_dir, log=self.console)
                over = choice[0] is None and (self.run_dir / METRICS_FILE).exists()
                if over and cfg.checkpoint.resume != "auto":
                    raise FileExistsError(
                        f"run directory {self.run_dir} already holds metrics.jsonl; resume it with "
                        f"checkpoint.resume=auto or choose another logging.run_dir")
            except (ckpt_io.CheckpointError, FileExistsError) as e:
                choice[1] = e
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(choice, src=0)  # every rank loads the checkpoint rank 0 verified
        resume, error = choice
        if error is not None:
            raise error
        if resume is not None:
            previous = ckpt_io.saved_config(resume)
            ckpt_io.load_checkpoint(self, resume)
            self.console(f"resumed from {resume} at step {self.step}")
            for line in ckpt_io.config_changes(previous, cfg.to_dict()):
                self.console(line)
        if self.topology.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yml")
            if cfg.data.tokenizer:
                shutil.copyfile(cfg.data.tokenizer, self.run_dir / "tokenizer.json")
            self.metrics = MetricsWriter(self.run_dir, cfg.logging, cfg.to_dict(),
                                         resume_step=self.step if resume is not None else -1 if over else None)
        if dist.is_initialized():
            dist.barrier()
        if self.metrics is not None and self.metrics.is_new:
            self.metrics.write(self._run_record())
        if self.metrics is not None and (resume is not None or over):
            # Records past the checkpoint's step were dropped (kept in metrics.replaced.jsonl): from here on
            # metrics.jsonl holds one record per step.
            self.metrics.write({"kind": "resume", "step": self.step, "checkpoint": resume and str(resume),
                                "dropped_records": self.metrics.dropped_records})

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
                "world_size": self.topology.world_size, "parallel": self._layout()}

    def console(self, message: str) -> None:
        if self.topology.is_main:
            print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ the loop

    def summary(self) -> str:
        """One line on what this run is: model, mixing, schedule, layout, precision."""
        from neox.model.gpt_neox import build_model, count_parameters

        cfg, topo = self.cfg, self.topology
        params = count_parameters(build_model(cfg.model, device="meta"))
        precision = "bf16" if self.engine.bfloat16_enabled() else "fp16" if self.engine.fp16_enabled() else "fp32"
        zero = cfg.deepspeed.get("zero_optimization", {}).get("stage", 0)
        return (f"{cfg.name}: {params / 1e6:.1f}M-parameter model, {cfg.mixing.method} mixing over "
                f"{self.num_domains} domains, {self.total_steps} steps of {cfg.data.global_batch_sequences} x "
                f"{cfg.data.seq_len_tokens} tokens; layout pipe {topo.pipe} x tensor {topo.tensor} x data {topo.data} "
                f"on {topo.world_size} {self.device.type} process(es), ZeRO-{zero}, {precision}")

    def fit(self) -> None:
        with StopSignals() as stop:
            self._fit(stop)

    def _fit(self, stop: StopSignals) -> None:
        self.console(self.summary())
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.step < self.total_steps:
            started = time.perf_counter()
            weights_in_force, lr = self.mixing.weights, self.scheduler.get_last_lr()[0]
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
            signum = stop.agreed(self.device)
            if signum:  # SIGINT/SIGTERM on any rank: the step is done; save it and stop
                path = self.checkpointer.save_now(self)
                if self.metrics is not None:
                    self.metrics.close()
                raise TrainingInterrupted(signum, self.step, path)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        if self.metrics is not None:
            self.metrics.close()

    def _token_loss(self, logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
        if self.topology.tensor > 1:  # vocab-sharded logits
            from neox.model.tensor_parallel import vocab_parallel_per_token_loss

            return vocab_parallel_per_token_loss(logits_BSV, labels_BS, self.topology.tensor_group)
        return per_token_loss(logits_BSV, labels_BS)

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> ReducedStats:
        """Forward/backward over this rank's micro-batches, one all-reduce of the statistics, one update."""
        engine, stats = self.engine, self.mixing.statistics
        grad_accum = len(micro_batches)
        stats.reset()
        if self.topology.pipe > 1:
            reduced = self.pipeline_step.run(micro_batches)
        else:
            reduced = None
            if self.target_corpus is not None:
                self._probe_targets()
            for i, ((tokens_BS1, domain_B), domain_host_B) in enumerate(self._to_device(micro_batches)):
                inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
                # delta at a probe layer's output is d(mean micro-batch loss / grad_accum)/dy; this factor
                # makes it the gradient of the SUM of per-token losses, which the statistics are kept in.
                # The host's domain ids: the probes sort tokens by domain there, without a device sync.
                stats.begin_micro_batch(domain_host_B, labels_BS.shape[1], grad_scale=labels_BS.numel()
                                        * grad_accum / loss_scale(self.engine))
                token_loss_BS = self._token_loss(engine(inputs_BS), labels_BS)
                if self.topology.counts_losses:  # tensor-parallel ranks hold the same losses: count them once
                    stats.add_losses(token_loss_BS.detach(), domain_B, inputs_BS, labels_BS)
                engine.backward(token_loss_BS.mean())
                if i == grad_accum - 1:
                    # After the last backward, before the update: one collective for every statistic, and
                    # the whole job agrees on whether this step may be applied.
                    reduced = self.mixing.reduce(self.topology.world_group)
                    self.optimizer.skip_next = reduced.nonfinite
                engine.step()
        assert reduced is not None
        if reduced.nonfinite:
            self.nonfinite_in_row += 1
            self.skipped_steps += 1
        else:
            self.nonfinite_in_row = 0
        return reduced

    def _to_device(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]):
        """The step's micro-batches on the device, all copies issued up front (from pinned memory, without
        blocking, on CUDA) so they overlap the first forward; each with its host domain ids."""
        cuda = self.device.type == "cuda"
        moved = [tuple(t.pin_memory().to(self.device, non_blocking=True) if cuda else t.to(self.device)
                       for t in batch) for batch in micro_batches]
        return [(batch, domain_B) for batch, (_, domain_B) in zip(moved, micro_batches)]

    def _probe_targets(self) -> None:
        """The target-only domains' gradient at the probe layers, for the alignment statistics alone.

        One micro-batch (``data.micro_batch_sequences`` sequences shared by the target domains, the next
        ones of the target split each step) goes forward and backward to the probe weights only:
        ``autograd.grad`` fires the probes' hooks but accumulates nothing into ``.grad``, so the update
        never sees these samples. Domain ids are ``num_domains + e``.
        """
        corpus, K = self.target_corpus, self.num_domains
        per = max(1, self.cfg.data.micro_batch_sequences // corpus.num_domains)
        domain_b = np.repeat(np.arange(corpus.num_domains), per)
        sample_b = np.tile(self.step * per + np.arange(per), corpus.num_domains)
        tokens_BS1 = torch.from_numpy(gather_samples(corpus, domain_b, sample_b)).to(self.device)
        domain_B = torch.from_numpy(domain_b + K).to(self.device)
        inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
        stats = self.mixing.statistics
        stats.begin_micro_batch(domain_B, labels_BS.shape[1], grad_scale=1.0)  # backward of the SUM
        token_loss_BS = self._token_loss(self.engine.module(inputs_BS), labels_BS)
        if self.topology.counts_losses:
            stats.add_losses(token_loss_BS.detach(), domain_B, inputs_BS, labels_BS)
        torch.autograd.grad(token_loss_BS.float().sum(), stats.alignment.probe_weights())

    def _step_record(self, stats: ReducedStats, weights: np.ndarray, lr: float, tokens_per_s: float) -> dict[str, Any]:
        K = self.num_domains  # the target probe's losses (after K) are not training losses
        record: dict[str, Any] = {"kind": "train", "step": self.step, "tokens": self.tokens,
                                  "loss": float(stats.loss_sum[:K].sum() / max(stats.token_count[:K].sum(), 1)),
                                  "lr": lr,
                                  "tokens_per_s": tokens_per_s, "skipped_steps": self.skipped_steps}
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_loss = stats.loss_sum / stats.token_count
        for k, name in enumerate(self.domains):
            record[f"weights/{name}"] = float(weights[k])
            record[f"train_loss/{name}"] = float(mean_loss[k]) if stats.token_count[k] else None
        for e, name in enumerate(self.target_only if self.target_corpus is not None else []):
            record[f"target_probe_loss/{name}"] = float(mean_loss[K + e])
        return record

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Per-domain validation loss and perplexity on the fixed validation set, summed over ranks."""
        K = len(self.val_domains)
        sums = torch.zeros(domain_sums_numel(K), dtype=torch.float64, device=self.device)  # layout of add_domain_sums
        topo = self.topology
        batches = self.val.batches(dp_rank=topo.dp_rank, dp_size=topo.dp_size)
        # The probe hooks ignore forwards without gradients, so evaluation needs no special handling.
        if topo.pipe > 1:
            items = pipeline_items(list(batches), self.device)
            self.domain_loss.reset()
            self.engine.eval_batch(iter(items), num_micro_batches=len(items), bcast_loss=False)
            if topo.counts_losses:
                totals = self.domain_loss.totals()
                sums[:K], sums[K:2 * K] = totals["loss_sum"], totals["token_count"]
            self.domain_loss.reset()
        else:
            self.engine.eval()
            for tokens_BS1, domain_B in batches:
                tokens_BS1, domain_B = tokens_BS1.to(self.device), domain_B.to(self.device)
                loss_BS = self._token_loss(self.engine(tokens_BS1[:, :-1]), tokens_BS1[:, 1:])
                if topo.counts_losses:
                    add_domain_sums(sums, K, loss_BS, domain_B)
        self.engine.train()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        loss = (sums[:K] / sums[K:2 * K].clamp_min(1)).cpu().numpy()
        ppl = np.exp(loss)
        ref = self._reference_weights()
        out: dict[str, float] = {}
        for k, name in enumerate(self.val_domains):
            out[f"val_loss/{name}"] = float(loss[k])
            out[f"val_ppl/{name}"] = float(ppl[k])
        out["val_loss/mean"] = float(loss.mean())
        out["val_ppl/mean"] = float(ppl.mean())  # unweighted mean over domains, as the paper reports
        out["val_ppl/weighted"] = float((ref * ppl[:self.num_domains]).sum())
        if self.cfg.mixing.target_domains:
            out["val_loss/target"] = float(loss[self.target_index].mean())
            out["val_ppl/target"] = float(ppl[self.target_index].mean())
        return out

    def _reference_weights(self) -> np.ndarray:
        ref = self.cfg.data.reference_weights
        if not ref:
            return np.full(self.num_domains, 1.0 / self.num_domains)
        w = np.asarray([ref.get(d, 0.0) for d in self.domains], dtype=np.float64)
        return w / w.sum() if w.sum() > 0 else np.full(self.num_domains, 1.0 / self.num_domains)

    # ------------------------------------------------------------------------------------------ state

    def states(self) -> dict[str, Any]:
        """The run's stateful parts, each with ``state_dict`` / ``load_state_dict``: what a checkpoint saves
        besides DeepSpeed's model, optimizer and scheduler state (neox/training/checkpoint.py places them)."""
        return {"trainer": self, "data": self.loader, "mixing": self.mixing,
                "callbacks": CallbackStates(self.callbacks)}

    def state_dict(self) -> dict[str, Any]:
        """The loop's counters, the domains and layout (checked on load) and the RNG states."""
        return {"step": self.step, "tokens": self.tokens, "nonfinite_in_row": self.nonfinite_in_row,
                "skipped_steps": self.skipped_steps, "domains": self.domains, "parallel": self._layout(),
                "rng": ckpt_io.rng_state()}

    def _layout(self) -> dict[str, int]:
        return {"pipe": self.topology.pipe, "tensor": self.topology.tensor, "data": self.topology.data}

    def check_layout(self, sd: dict[str, Any]) -> None:
        """A checkpoint resumes at the (pipe, tensor) layout that wrote it (DeepSpeed's files are per stage
        and shard); refuse another one before DeepSpeed fails on missing files."""
        saved = sd.get("parallel", {"pipe": 1, "tensor": 1})  # written before the field existed: pipe=tensor=1
        if (saved["pipe"], saved["tensor"]) != (self.topology.pipe, self.topology.tensor):
            raise ConfigError(f"the checkpoint was written with parallel.pipe={saved['pipe']}, parallel.tensor="
                             f"{saved['tensor']}; this run has pipe={self.topology.pipe}, tensor="
                             f"{self.topology.tensor}. Resume with the checkpoint's layout (its model.safetensors "
                             f"holds the full weights for export and evaluation at any layout)")

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["domains"] != self.domains:
            raise ValueError(f"checkpoint domains {sd['domains']} differ from this run's {self.domains}")
        self.check_layout(sd)
        self.step, self.tokens = sd["step"], sd["tokens"]
        self.nonfinite_in_row, self.skipped_steps = sd["nonfinite_in_row"], sd["skipped_steps"]
        ckpt_io.set_rng_state(sd["rng"])

