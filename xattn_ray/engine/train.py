"""One worker's training loop: Adam, label smoothing, warmup schedules, early stopping, exact resume.

The loop knows nothing of Ray. It reports through a `Reporter` (metrics, and a checkpoint folder when
one was written) and resumes from a folder it wrote earlier, so the Ray runner plugs in by passing a
reporter that forwards to `ray.tune.report` and the folder Ray restored. It makes no assumption that
it is alone: under `torch.distributed` every worker passes its shard of each batch, gradients are
scaled by the global number of target tokens, and DDP averages them.

Exact resume: a checkpoint (`last.pt`) holds the weights, the optimizer, the schedule position, the
data position (epoch, batch) and the random-number state; batches derive from (seed, epoch) only.
A run killed at any moment and resumed from its last checkpoint repeats the same updates and ends
with the same metrics as an uninterrupted one (on CPU, for a given seed).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from xattn_ray.engine.batching import PairSource, collate, make_batches, rank_share
from xattn_ray.engine.checkpoint import (DeltaBase, atomic_save, load_weights, model_state_entries, read_checkpoint,
                                        save_model)
from xattn_ray.engine.model import Transformer
from xattn_ray.engine.tokenizer import PAD_ID, Tokenizer
from xattn_ray.schema import Invalid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation options (the experiment's `train:` section). Defaults follow fairseq's recipe."""

    lr: float = 5e-4  # peak learning rate, reached at the end of warmup
    schedule: Literal["inverse_sqrt", "polynomial"] = "inverse_sqrt"  # decay after warmup
    warmup_updates: int = 4000  # linear warmup from `warmup_init_lr` to `lr`
    warmup_init_lr: float = 1e-7
    end_lr: float = 0.0  # `polynomial` decays linearly to this at `max_updates`
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 0.0  # clip the gradient norm to this; 0 turns clipping off
    max_tokens: int = 4096  # padded tokens per batch and side, per worker
    update_freq: int = 1  # batches accumulated into one update
    max_updates: int = 0  # stop after this many updates; 0: no limit
    max_epochs: int = 0  # stop after this many passes over the data; 0: no limit
    max_seconds: float = 0.0  # wall-time budget; 0: none (a time budget makes resume inexact)
    validate_every: int = 500  # updates between validations (and checkpoints)
    patience: int = 10  # validations without a better validation loss before stopping; 0: never
    bf16: bool = False  # bf16 autocast, on GPUs only (CPUs here have no fast bf16)
    seed: int = 1

    def __post_init__(self) -> None:
        # Every check is one the loop would otherwise fail on (or silently misbehave on) mid-run.
        for name in ("lr", "adam_eps", "max_tokens", "update_freq", "validate_every"):
            if not getattr(self, name) > 0:  # `not >`: nan fails too
                raise Invalid(name, f"must be positive, got {getattr(self, name)!r}")
        for name in ("warmup_updates", "warmup_init_lr", "end_lr", "weight_decay", "clip_norm", "max_updates",
                     "max_epochs", "max_seconds", "patience"):
            if not getattr(self, name) >= 0:
                raise Invalid(name, f"must not be negative, got {getattr(self, name)!r}")
        for name in ("lr", "warmup_init_lr", "end_lr", "adam_eps", "weight_decay", "max_seconds", "clip_norm"):
            if not math.isfinite(getattr(self, name)):
                raise Invalid(name, f"must be a finite number, got {getattr(self, name)!r}")
        if self.schedule == "inverse_sqrt" and self.warmup_updates == 0:
            raise Invalid("warmup_updates", "the inverse_sqrt schedule scales lr by sqrt(warmup_updates / update): "
                                            "with 0 the learning rate stays 0; use at least 1")
        if not 0 <= self.label_smoothing < 1:
            raise Invalid("label_smoothing", f"must be in [0, 1), got {self.label_smoothing!r}")
        for i, beta in enumerate(self.adam_betas):
            if not 0 <= beta < 1:
                raise Invalid(("adam_betas", i), f"must be in [0, 1), got {beta!r}")
        if self.schedule == "polynomial" and self.max_updates <= 0:
            raise Invalid("max_updates", "the polynomial schedule decays to `end_lr` at max_updates; set it")
        if not (self.max_updates or self.max_epochs or self.max_seconds or self.patience):
            raise Invalid(None, "set at least one of max_updates, max_epochs, max_seconds, patience")
        if not 0 <= self.seed < 2**32:  # numpy's and Python's seeding range
            raise Invalid("seed", f"must be in [0, 2**32), got {self.seed!r}")


class Reporter(Protocol):
    """Where the loop sends its progress: metrics after every validation, with the checkpoint folder."""

    def report(self, metrics: dict[str, float | int | str], checkpoint_dir: Path | None) -> None: ...


class LogReporter:
    """Reports to the log (one line per validation): the in-process default."""

    def report(self, metrics: dict[str, float | int | str], checkpoint_dir: Path | None) -> None:
        log.info("update %(update)d  epoch %(epoch)d  train loss %(train_loss).3f  valid loss %(valid_loss).3f"
                 "  lr %(lr).2e  %(target_tokens_per_second).0f tgt tok/s", metrics)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    update: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_valid_loss: float = math.inf
    best_update: int = 0
    bad_validations: int = 0  # validations since the best one
    train_seconds: float = 0.0
    target_tokens: int = 0
    history: list[dict] = field(default_factory=list)  # metrics of every validation


# The files `train` writes into its folder (study/run_folder.py lays out the rest of a run's folder).
LAST_CHECKPOINT = "last.pt"  # full training state: weights, optimizer, schedule position, RNG
BEST_CHECKPOINT = "best.pt"  # the model with the lowest validation loss, with its tokenizers

@dataclass(frozen=True)
class TrainResult:
    progress: Progress
    stop_reason: str  # max_updates | max_epochs | max_seconds | early_stopping | non-finite loss ...
    best_checkpoint: Path

    @property
    def failed(self) -> bool:
        return self.stop_reason.startswith("non-finite")


@dataclass(frozen=True)
class TrainingData:
    """Encoded training and validation pairs and the tokenizers checkpoints must carry.

    `train` is usually a memory-mapped token shard (data.shards), `valid` pairs in memory.
    """

    train: PairSource
    valid: PairSource
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer


def learning_rate(config: TrainConfig, update: int) -> float:
    """The learning rate for update number `update` (1-based)."""
    if update <= config.warmup_updates:
        return config.warmup_init_lr + (config.lr - config.warmup_init_lr) * update / config.warmup_updates
    if config.schedule == "inverse_sqrt":
        return config.lr * math.sqrt(config.warmup_updates / update)
    remaining = max(0.0, 1 - (update - config.warmup_updates) / max(1, config.max_updates - config.warmup_updates))
    return config.end_lr + (config.lr - config.end_lr) * remaining


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam over the trainable parameters only (frozen ones get no state).

    The fused implementation updates every tensor in one pass; on a 2-core CPU it steps a 48M-parameter
    model about 7x faster than the default loop of separate element-wise operations.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(trainable, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
                            weight_decay=config.weight_decay, fused=True)


def train(model: nn.Module, data: TrainingData, config: TrainConfig, workdir: Path,
          reporter: Reporter | None = None, resume_from: Path | None = None,
          extra: dict | None = None, base: DeltaBase | None = None) -> TrainResult:
    """Train `model` (a Transformer, or a DDP wrapper of one) until a stopping rule fires.

    Writes `workdir/last.pt` (full training state, for resume) and `workdir/best.pt` (the model with
    the lowest validation loss, with its tokenizers and `extra`) at every validation; with `base` (a
    child's parent checkpoint) both hold only the weights that differ from it.
    `resume_from`: a folder holding a `last.pt` written by an earlier call.
    """
    reporter = reporter or LogReporter()
    core: Transformer = getattr(model, "module", model)
    device = next(core.parameters()).device
    optimizer = build_optimizer(model, config)
    torch.manual_seed(config.seed)
    progress = Progress()
    if resume_from is not None and (resume_from / LAST_CHECKPOINT).is_file():
        progress = _restore(resume_from / LAST_CHECKPOINT, core, optimizer)
        log.info("resumed at update %d (epoch %d, batch %d)", progress.update, progress.epoch,
                 progress.batch_in_epoch)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    workdir.mkdir(parents=True, exist_ok=True)

    def checkpoint_and_report(train_loss: float, window_tokens: int, window_seconds: float) -> bool:
        """Validate, save, report; True when early stopping says to stop."""
        valid_loss = validation_loss(core, data.valid, config.max_tokens, device)
        improved = valid_loss < progress.best_valid_loss
        if improved:
            progress.best_valid_loss, progress.best_update, progress.bad_validations = valid_loss, progress.update, 0
        else:
            progress.bad_validations += 1
        metrics = {"update": progress.update, "epoch": progress.epoch, "train_loss": train_loss,
                   "valid_loss": valid_loss, "valid_ppl": math.exp(min(valid_loss, 50.0)),
                   "best_valid_loss": progress.best_valid_loss, "lr": learning_rate(config, max(1, progress.update)),
                   "target_tokens_per_second": window_tokens / max(window_seconds, 1e-9),
                   "train_seconds": progress.train_seconds}
        progress.history.append(metrics)
        if rank == 0:
            if improved:
                save_model(workdir / BEST_CHECKPOINT, core, data.src_tokenizer, data.tgt_tokenizer,
                           {**(extra or {}), "update": progress.update, "valid_loss": valid_loss}, base)
            _save_state(workdir / LAST_CHECKPOINT, core, optimizer, progress, base)
        reporter.report(metrics, workdir if rank == 0 else None)
        return config.patience > 0 and progress.bad_validations >= config.patience

    # A resumed run that had already finished stops at once instead of taking one more update.
    stop_reason = _limit_reached(config, progress) or (
        "early_stopping" if config.patience and progress.bad_validations >= config.patience else "")
    window_loss = window_tokens = 0.0
    window_seconds = 0.0
    model.train()
    while not stop_reason:
        batches = make_batches(data.train, config.max_tokens * world_size, config.seed, progress.epoch)
        while progress.batch_in_epoch < len(batches):
            started = time.perf_counter()
            group = batches.group(progress.batch_in_epoch, config.update_freq)
            loss_sum, tokens = _update(model, optimizer, data.train, group, config, progress.update + 1,
                                       rank, world_size, device)
            progress.batch_in_epoch += len(group)
            if not math.isfinite(loss_sum):
                stop_reason = f"non-finite loss ({loss_sum}) at update {progress.update + 1}"
                break
            progress.update += 1
            if progress.update == 1:  # benchmarks time the start of training up to this line
                log.info("update 1 done (epoch %d, %d target tokens)", progress.epoch, tokens)
            elapsed = time.perf_counter() - started
            progress.train_seconds += elapsed
            progress.target_tokens += tokens
            window_loss, window_tokens, window_seconds = window_loss + loss_sum, window_tokens + tokens, \
                window_seconds + elapsed
            at_limit = _limit_reached(config, progress)
            if progress.update % config.validate_every == 0 or at_limit:
                if checkpoint_and_report(window_loss / max(window_tokens, 1), int(window_tokens), window_seconds):
                    stop_reason = "early_stopping"
                window_loss = window_tokens = window_seconds = 0.0
                model.train()
            stop_reason = stop_reason or at_limit
            if stop_reason:
                break
        else:
            progress.epoch += 1
            progress.batch_in_epoch = 0
            if config.max_epochs and progress.epoch >= config.max_epochs:
                stop_reason = "max_epochs"
                if window_tokens:
                    checkpoint_and_report(window_loss / window_tokens, int(window_tokens), window_seconds)
    if stop_reason.startswith("non-finite"):
        log.error("stopping: %s", stop_reason)
    return TrainResult(progress=progress, stop_reason=stop_reason, best_checkpoint=workdir / BEST_CHECKPOINT)


def _limit_reached(config: TrainConfig, progress: Progress) -> str:
    if config.max_updates and progress.update >= config.max_updates:
        return "max_updates"
    if config.max_seconds and progress.train_seconds >= config.max_seconds:
        return "max_seconds"
    return ""


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, pairs: PairSource, group: list[np.ndarray],
            config: TrainConfig, update: int, rank: int, world_size: int, device: torch.device) -> tuple[float, int]:
    """One optimizer step over the batches in `group`; returns (summed loss, target tokens), all workers."""
    shares = [rank_share(batch, rank, world_size) for batch in group]  # each worker reads only its share
    batches = [collate(pairs, share) for share in shares if len(share)]
    local_tokens = sum(batch.target_tokens for batch in batches)
    # Gradients are sums over tokens; dividing by the global token count (times world size, since DDP
    # averages) makes the update identical however the batch is split across workers.
    global_tokens = int(_all_reduce(torch.tensor([float(local_tokens)]), device).item())
    scale = world_size / global_tokens
    loss_total = 0.0
    for batch in batches:
        keep = batch.tgt_out != PAD_ID
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda"):
            loss = model(batch.src.to(device), batch.tgt_in.to(device), keep.to(device),
                         _on(batch.src_segments, device), targets=batch.tgt_out[keep].to(device),
                         label_smoothing=config.label_smoothing)
        (loss * scale).backward()
        loss_total += loss.item()
    loss_global = _all_reduce(torch.tensor([loss_total]), device).item()
    if math.isfinite(loss_global):
        if config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.clip_norm)
        for param_group in optimizer.param_groups:
            param_group["lr"] = learning_rate(config, update)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_global, global_tokens


def _all_reduce(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum `values` over workers (a no-op for a single process). On a CPU the sum lands in `values`
    itself (.to() returns it), so reduce a tensor only once."""
    if not dist.is_initialized():
        return values
    on_device = values.to(device)
    dist.all_reduce(on_device)
    return on_device.cpu()


@torch.no_grad()
def validation_loss(model: Transformer, pairs: PairSource, max_tokens: int, device: torch.device) -> float:
    """Mean negative log-likelihood per target token (no label smoothing), in eval mode."""
    model.eval()
    total = tokens = 0.0
    for indices in make_batches(pairs, max_tokens, seed=0, epoch=0, shuffle=False):
        batch = collate(pairs, indices)
        keep = batch.tgt_out != PAD_ID
        total += model(batch.src.to(device), batch.tgt_in.to(device), keep.to(device),
                       _on(batch.src_segments, device), targets=batch.tgt_out[keep].to(device)).item()
        tokens += int(keep.sum())
    return total / max(tokens, 1)


def _on(segments: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Segment ids (code-switched sources) on `device`; None for plain sources."""
    return None if segments is None else segments.to(device)


def _save_state(path: Path, model: Transformer, optimizer: torch.optim.Optimizer, progress: Progress,
                base: DeltaBase | None) -> None:
    atomic_save({**model_state_entries(path, model, base, key="model"), "optimizer": optimizer.state_dict(),
                 "progress": dataclasses.asdict(progress), "torch_rng": torch.get_rng_state()}, path)


def _restore(path: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> Progress:
    state = read_checkpoint(path, ("model", "optimizer", "progress", "torch_rng"))
    load_weights(path, model, state, "model")
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(**state["progress"])

