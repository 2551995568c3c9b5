"""Engine speed on one GPU against Hugging Face's MarianMTModel: every figure of one run, in one go.

A prepared script for a machine lent for minutes (one try): it runs its measurements in order of
priority, each case in its own try/except (a failure prints its traceback, lands in the JSON under
`errors`, and the next case runs), starts no new case once `--budget` seconds have passed (those are
listed as skipped), and rewrites `--out`'s JSON and markdown after every case, so a run cut short
still leaves what it measured. The measurements, all with identical dimensions, vocabularies and
batches on both sides, timed in turns (`engine_speed.alternate`, the same statistics):

1. training throughput (target tokens/s of forward + backward + fused Adam) of the `base` preset with
   8,000-piece vocabularies against a `MarianMTModel` of the same dimensions, bf16 autocast on both
   sides (forward under autocast, loss on fp32 logits, as engine/train.py trains on a GPU), at 8,192
   and 16,384 padded tokens a batch; then, time allowing, at OPUS-MT's vocabulary (58,101 pieces a
   side; `base` already has OPUS-MT's d_model 512 and 6+6 layers);
2. the model FLOPs utilisation (MFU) of both sides in (1): `training_flops` / seconds / the chip's
   dense bf16 peak (`PEAK_BF16_TFLOPS`, or `--peak-tflops`);
3. beam-5 translation (sentences/s) against `MarianMTModel.generate`, EOS never preferred on both
   sides (`engine_speed.never_prefer_eos`) so every sentence runs to its length limit: in fp32 (what
   `engine.decode.translate` runs) and under bf16 autocast on both sides;
4. data-parallel training on the one GPU through the engine's own loop (`engine.train.train`): one
   process against two DDP processes (NCCL; gloo when NCCL refuses two ranks on one device) over the
   same global batches, target tokens/s of each and whether their losses agree. The engine scales
   gradients by the global token count, so the updates are the same however a batch is split; with
   dropout off, only rounding separates the two runs' losses.

Every timed call ends with torch.cuda.synchronize(), so its seconds hold all the work it queued.
Needs the `bench` extra (transformers). On a GPU machine:

    python experiments/benchmarks/gpu_speed.py --out results/ [--peak-tflops T] [--budget S]

`--quick` is a smoke run (the `tiny` preset, small batches, 2 pairs of turns);
`--device cpu --quick` proves the script end to end on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine_speed import (BEAM_TARGET, OPUS_MT_VOCAB, TRAIN_TARGET, VOCAB, Comparison, alternate, beam_call,
                          decoding_batches, marian_like, never_prefer_eos, synthetic_pairs, training_batches,
                          training_calls)
from xattn_ray.engine.batching import Batch, collate, make_batches
from xattn_ray.engine.model import ModelConfig, Transformer, preset_config
from xattn_ray.engine.tokenizer import PAD_ID, Tokenizer
from xattn_ray.engine.train import TrainConfig, TrainingData, train

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, in TFLOPS, keyed by a part of
# torch.cuda.get_device_name(); the first key found in the name wins, so "H100 PCIe" precedes "H100".
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.5, "H100": 989.4, "A100": 312.0, "L4": 121.0}
MFU_TARGET = 0.40  # of the engine's training step
DDP_LOSS_TOLERANCE = 5e-3  # relative: bf16 matrix products of the two shares round differently


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: the full one for a GPU, the quick one a smoke test."""

    preset: str
    pairs: int  # pairs of turns per comparison (beam: two fewer, at least 2)
    max_tokens: tuple[int, ...]  # padded tokens per training batch and side, one comparison each
    tokens_per_call: int  # a timed training call steps through this many padded tokens' batches
    corpus: int  # synthetic sentence pairs to draw batches from
    beam_sentences: int
    beam_max_tokens: int  # padded source tokens per decoding batch
    ddp_updates: int  # updates of each engine training run (after 2 warm-up updates)
    ddp_max_tokens: int  # padded tokens of a global batch (each of 2 processes takes half)


FULL = Plan("base", 7, (8192, 16384), 65536, 20000, 256, 4096, 40, 16384)
QUICK = Plan("tiny", 2, (512, 1024), 1024, 1500, 8, 512, 4, 1024)


def training_flops(config: ModelConfig, batch: Batch) -> int:
    """Model FLOPs of one training step on `batch`: 3 x the forward pass's matrix products.

    An exact count of the multiply-adds (2 FLOPs each) of every matrix product the model needs for the
    batch's real tokens, from each sentence's source length S and target length T (EOS counted):
    per encoder layer, Q/K/V/out projections and the feed-forward block for every source token, and
    4*D*S for each query's scores and weighted sum over its S keys; per decoder layer, self-attention
    projections, cross-attention query/output projections and the feed-forward block for every target
    token, cross-attention key/value projections for every source token, causal self-attention (the
    query at position t attends t+1 keys) and cross-attention over S keys; the output projection
    D x V for every target token. Embedding lookups, layer norms, softmax, dropout and the optimizer
    are not matrix products and are left out, as is the padding either implementation may compute.
    The backward pass costs twice the forward (gradients of inputs and of weights): 3x in all.
    """
    d, ffn, vocab = config.d_model, config.ffn_dim, config.tgt_vocab_size
    src_lengths = (batch.src != PAD_ID).sum(1).tolist()
    tgt_lengths = (batch.tgt_out != PAD_ID).sum(1).tolist()
    src_tokens, tgt_tokens = sum(src_lengths), sum(tgt_lengths)
    projections, feed_forward = 2 * d * d, 2 * 2 * d * ffn  # per token: one D x D product; fc1 + fc2
    encoder = src_tokens * (4 * projections + feed_forward) + 4 * d * sum(s * s for s in src_lengths)
    decoder = (tgt_tokens * (6 * projections + feed_forward) + src_tokens * 2 * projections
               + 4 * d * sum(t * (t + 1) // 2 for t in tgt_lengths)
               + 4 * d * sum(s * t for s, t in zip(src_lengths, tgt_lengths)))
    forward = config.encoder_layers * encoder + config.decoder_layers * decoder + tgt_tokens * 2 * d * vocab
    return 3 * forward


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """The dense bf16 peak of `device` (`override` if given); None when unknown (a CPU, an unlisted GPU)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def environment(device: torch.device) -> dict:
    """Versions and the device, printed first and stored with the figures (a missing library is named,
    not fatal: the cases that need it fail on their own)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        transformers = version("transformers")
    except PackageNotFoundError:
        transformers = "not installed"
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "transformers": transformers, "device": str(device),
             "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts.update(device_name=properties.name, capability=f"{properties.major}.{properties.minor}",
                     memory_gib=round(properties.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        try:
            nccl = torch.cuda.nccl.version()
            facts["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as error:  # a build without NCCL: gloo carries measurement 4
            facts["nccl"] = f"unavailable ({error})"
    else:
        facts["device_name"] = platform.processor() or platform.machine()
    return facts


def on_device(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.src.to(device), batch.tgt_in.to(device), batch.tgt_out.to(device))


def timed(call, device: torch.device, bf16: bool = False):
    """`call` under bf16 autocast when asked, then waiting for the device: a timer around it sees all
    the work it queued."""
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def release(device: torch.device) -> None:
    """Give cached device memory back between cases (two models of 58k-piece vocabularies add up)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def comparison_record(comparison: Comparison, flops_per_call: int | None, peak: float | None) -> dict:
    first, third = comparison.quartiles
    record = {"label": comparison.label, "unit": comparison.unit, "work_per_call": comparison.work,
              "ours_seconds": comparison.ours, "theirs_seconds": comparison.theirs,
              "ours_rate": comparison.work / statistics.median(comparison.ours),
              "theirs_rate": comparison.work / statistics.median(comparison.theirs),
              "ratio": comparison.ratio, "ratio_iqr": [first, third],
              "ratio_range": [min(comparison.ratios), max(comparison.ratios)], "pairs": len(comparison.ratios),
              "target": comparison.target, "met": comparison.met, "trusted": comparison.trusted}
    if flops_per_call is not None:
        record["model_tflops_per_call"] = flops_per_call / 1e12
        if peak:
            for side, seconds in (("ours", comparison.ours), ("theirs", comparison.theirs)):
                record[f"mfu_{side}"] = flops_per_call / statistics.median(seconds) / (peak * 1e12)
            record["mfu_met"] = record["mfu_ours"] >= MFU_TARGET
    return record


def train_case(plan: Plan, pairs, device: torch.device, vocab: int, max_tokens: int, peak: float | None) -> dict:
    """Measurements 1 and 2 at one vocabulary and batch size."""
    cpu_batches = training_batches(pairs, max(1, plan.tokens_per_call // max_tokens), max_tokens)
    config = preset_config(plan.preset, vocab, vocab)
    flops = sum(training_flops(config, batch) for batch in cpu_batches)
    batches = [on_device(batch, device) for batch in cpu_batches]
    ours = Transformer(config).to(device)
    theirs = marian_like(ours).to(device)
    seconds = alternate(timed(training_calls(ours, batches, False, bf16=True), device),
                        timed(training_calls(theirs, batches, True, bf16=True), device), plan.pairs)
    comparison = Comparison(f"train {plan.preset} V {vocab}, {max_tokens} tok, bf16", *seconds,
                            sum(batch.target_tokens for batch in batches), "tgt tok/s", TRAIN_TARGET)
    record = comparison_record(comparison, flops, peak)
    print(comparison.line())
    if "mfu_ours" in record:
        print(f"{'':<36} MFU xattn-ray {record['mfu_ours']:.1%} | Marian {record['mfu_theirs']:.1%} "
              f"({flops / 1e12:.2f} model TFLOP a call, peak {peak} TFLOPS) target >= {MFU_TARGET:.0%}: "
              f"{'met' if record['mfu_met'] else 'NOT MET'}")
    return record


def beam_case(plan: Plan, pairs, device: torch.device, vocab: int, bf16: bool) -> dict:
    """Measurement 3: beam 5 against `generate`, in fp32 or under bf16 autocast on both sides."""
    batches = [on_device(batch, device) for batch in decoding_batches(pairs, plan.beam_sentences,
                                                                      plan.beam_max_tokens)]
    ours = Transformer(preset_config(plan.preset, vocab, vocab)).to(device)
    theirs = marian_like(ours).to(device)
    never_prefer_eos(ours), never_prefer_eos(theirs)
    seconds = alternate(timed(beam_call(ours, batches, False), device, bf16),
                        timed(beam_call(theirs, batches, True), device, bf16), max(2, plan.pairs - 2))
    precision = "bf16" if bf16 else "fp32"
    comparison = Comparison(f"beam-5 {plan.preset} V {vocab}, {precision}", *seconds, plan.beam_sentences, "sent/s",
                            BEAM_TARGET)
    print(comparison.line())
    return comparison_record(comparison, None, None)


# -- measurement 4: the engine's training loop, one process against two DDP processes ------------------

class Recorder:
    """A `Reporter` that keeps every validation's metrics."""

    def __init__(self) -> None:
        self.metrics: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        self.metrics.append(dict(metrics))


def stand_in_tokenizer() -> Tokenizer:
    """A 30-piece SentencePiece model: `train` writes tokenizers into its checkpoints, though the
    synthetic ids were never text."""
    import sentencepiece as spm

    model = io.BytesIO()
    lines = [f"w{i % 97} x{i % 13} y{i % 7} z{i % 31}" for i in range(2000)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=30,
                                   minloglevel=2)
    return Tokenizer("xx", model.getvalue(), {})


def ddp_config(plan: Plan, world_size: int) -> TrainConfig:
    """The engine's options for measurement 4: bf16, a short warmup so that the weights move, one
    validation halfway and one at the end; each process takes 1/world_size of a global batch."""
    return TrainConfig(lr=5e-4, warmup_updates=max(1, plan.ddp_updates // 4), bf16=True, seed=1, patience=0,
                       max_tokens=plan.ddp_max_tokens // world_size, max_updates=plan.ddp_updates,
                       validate_every=max(1, plan.ddp_updates // 2))


def ddp_worker(rank: int, world_size: int, backend: str, job: dict) -> None:
    """One process of a run of `engine.train.train` (world_size 1: the plain model, no process group).
    Two updates warm the device up; the weights go back to their start, and the measured run follows.
    Rank 0 writes the run's figures to `job["workdir"]/<world_size>-<backend>/result.json`."""
    device = torch.device(job["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # two processes on a CPU's cores
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=job["timeout"]))
    try:
        torch.manual_seed(0)  # the same start on every rank and in every run
        # No dropout: the two runs then differ only by rounding.
        plan = Plan(**{**job["plan"], "max_tokens": tuple(job["plan"]["max_tokens"])})
        model = Transformer(preset_config(plan.preset, VOCAB, VOCAB, dropout=0.0, attention_dropout=0.0)).to(device)
        wrapped = model
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        tokenizer = stand_in_tokenizer()
        data = TrainingData(synthetic_pairs(plan.corpus), synthetic_pairs(200, seed=1), tokenizer, tokenizer)
        config = ddp_config(plan, world_size)
        folder = Path(job["workdir"]) / f"{world_size}-{backend}"
        start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        train(wrapped, data, dataclasses.replace(config, max_updates=2, validate_every=2), folder / "warm-up",
              Recorder())
        model.load_state_dict(start)
        recorder = Recorder()
        result = train(wrapped, data, config, folder / "run", recorder)
        if rank == 0:
            (folder / "result.json").write_text(json.dumps({
                "target_tokens": result.progress.target_tokens, "train_seconds": result.progress.train_seconds,
                "stop_reason": result.stop_reason,
                "losses": [[m["update"], m["train_loss"], m["valid_loss"]] for m in recorder.metrics]}))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn_run(world_size: int, backend: str, job: dict) -> dict:
    """Run `ddp_worker` in `world_size` fresh processes; their result, or the first worker's error.
    Workers still running after job["timeout"] seconds are terminated (a collective that never returns)."""
    job = {**job, "port": free_port()}
    context = mp.spawn(ddp_worker, args=(world_size, backend, job), nprocs=world_size, join=False)
    deadline = time.monotonic() + job["timeout"]
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            for process in context.processes:
                process.join(5)
            raise TimeoutError(f"{world_size} processes ({backend}) still running after {job['timeout']} s")
    return json.loads((Path(job["workdir"]) / f"{world_size}-{backend}" / "result.json").read_text())


def ddp_case(plan: Plan, pairs, device: torch.device, peak: float | None, timeout: float) -> dict:
    """Measurement 4 (module docstring)."""
    batches, epoch = [], 0  # the global batches the measured updates take, for their model FLOPs
    while len(batches) < plan.ddp_updates:
        batches += list(make_batches(pairs, plan.ddp_max_tokens, seed=1, epoch=epoch))[:plan.ddp_updates - len(batches)]
        epoch += 1
    collated = [collate(pairs, batch) for batch in batches]
    config = preset_config(plan.preset, VOCAB, VOCAB)
    flops_per_token = (sum(training_flops(config, batch) for batch in collated)
                       / sum(batch.target_tokens for batch in collated))
    record: dict = {"preset": plan.preset, "global_max_tokens": plan.ddp_max_tokens, "updates": plan.ddp_updates,
                    "bf16": device.type == "cuda", "refused": {}, "runs": []}
    with tempfile.TemporaryDirectory() as workdir:
        job = {"device": str(device), "plan": dataclasses.asdict(plan), "workdir": workdir, "timeout": timeout}
        runs = [(1, "single", spawn_run(1, "single", job))]
        for backend in (("nccl", "gloo") if device.type == "cuda" else ("gloo",)):
            try:
                runs.append((2, backend, spawn_run(2, backend, job)))
                break
            except Exception as error:  # NCCL may refuse two ranks on one device: try the next backend
                reason = f"{type(error).__name__}: {str(error).strip()}"  # a worker's error holds its traceback
                record["refused"][backend] = reason[-3000:]
                print(f"2 processes with {backend}: refused ({reason.splitlines()[-1][:300]})", flush=True)
    for processes, backend, result in runs:
        rate = result["target_tokens"] / result["train_seconds"]
        run = {"processes": processes, "backend": backend, "tokens_per_s": rate, **result}
        if peak:
            run["mfu"] = rate * flops_per_token / (peak * 1e12)
        record["runs"].append(run)
        mfu = f", MFU {run['mfu']:.1%}" if peak else ""
        print(f"engine loop, {processes} process(es) ({backend}): {rate:8.1f} tgt tok/s{mfu}; losses (update, "
              f"train, valid): {result['losses']}", flush=True)
    if len(runs) == 2:
        one, two = (run["losses"] for run in record["runs"])
        record["scaling"] = record["runs"][1]["tokens_per_s"] / record["runs"][0]["tokens_per_s"]
        record["loss_max_relative_difference"] = max(
            abs(a - b) / abs(a) for first, second in zip(one, two) for a, b in zip(first[1:], second[1:]))
        record["losses_match"] = (len(one) == len(two) and [u for u, *_ in one] == [u for u, *_ in two]
                                  and record["loss_max_relative_difference"] <= DDP_LOSS_TOLERANCE)
        print(f"2 processes / 1 process: {record['scaling']:.2f}x tokens/s; losses differ by at most "
              f"{record['loss_max_relative_difference']:.2e} relative (tolerance {DDP_LOSS_TOLERANCE}): "
              f"{'match' if record['losses_match'] else 'DO NOT MATCH'}", flush=True)
    return record


# -- the report ------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    """The figures as docs-ready markdown tables."""
    facts, plan = results["environment"], results["plan"]
    lines = ["# Engine speed on a GPU against MarianMTModel", "",
             f"{facts['device_name']}; torch {facts['torch']} (CUDA {facts['cuda']}), transformers "
             f"{facts['transformers']}; dense bf16 peak {results['peak_tflops'] or 'unknown'} TFLOPS; preset "
             f"`{plan['preset']}`; pairs of turns per comparison: {plan['pairs']} (beam: {max(2, plan['pairs'] - 2)}).",
             "", "| measurement | xattn-ray | MarianMTModel | ratio (IQR) | target | MFU xattn-ray | MFU Marian |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    percent = lambda value: "n/a" if value is None else f"{value:.1%}"
    for record in results["train"] + results["beam"]:
        first, third = record["ratio_iqr"]
        verdict = ("met" if record["met"] else "not met") + ("" if record["trusted"] else ", spread too wide")
        lines.append(f"| {record['label']} | {record['ours_rate']:,.0f} {record['unit']} | "
                     f"{record['theirs_rate']:,.0f} {record['unit']} | {record['ratio']:.2f} "
                     f"({first:.2f}-{third:.2f}) | >= {record['target']}: {verdict} | "
                     f"{percent(record.get('mfu_ours'))} | {percent(record.get('mfu_theirs'))} |")
    ddp = results.get("ddp")
    if ddp:
        lines += ["", f"Training through `engine.train.train` on one device, global batches of "
                      f"{ddp['global_max_tokens']} padded tokens, {ddp['updates']} updates, dropout off:", "",
                  "| processes | backend | tgt tok/s | MFU | losses (update, train, valid) |",
                  "| --- | --- | --- | --- | --- |"]
        for run in ddp["runs"]:
            losses = "; ".join(f"{u}: {t:.4f}, {v:.4f}" for u, t, v in run["losses"])
            lines.append(f"| {run['processes']} | {run['backend']} | {run['tokens_per_s']:,.0f} | "
                         f"{percent(run.get('mfu'))} | {losses} |")
        for backend, reason in ddp["refused"].items():
            lines.append(f"\n{backend} refused two processes on one device: {reason.splitlines()[-1][:300]}")
        if "scaling" in ddp:
            lines.append(f"\n2 processes / 1: {ddp['scaling']:.2f}x; losses differ by at most "
                         f"{ddp['loss_max_relative_difference']:.2e} relative: "
                         f"{'match' if ddp['losses_match'] else 'do not match'}.")
    for case, error in results["errors"].items():
        lines.append(f"\nFailed: {case}: {error.strip().splitlines()[-1]}")
    if results["skipped"]:
        lines.append(f"\nSkipped (over the {results['budget_s']} s budget): {', '.join(results['skipped'])}.")
    return "\n".join(lines) + "\n"


def save(results: dict, out: Path | None) -> None:
    """Write the JSON and the markdown, each replacing its earlier version whole."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_speed.json", json.dumps(results, indent=1)), ("gpu_speed.md", markdown(results))):
        partial = out / f".{name}.partial"
        partial.write_text(text)
        partial.replace(out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_speed.json and gpu_speed.md")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny preset, small batches")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, overriding the table")
    parser.add_argument("--pairs", type=int, help="pairs of turns per comparison (default 7; --quick: 2)")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds after which no new case starts (default 270)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: --device {args.device}: this torch ({torch.__version__}) sees no "
                       "CUDA device; pass --device cpu --quick for a smoke run\n")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    plan = QUICK if args.quick else FULL
    if args.pairs:
        plan = dataclasses.replace(plan, pairs=args.pairs)
    started = time.monotonic()
    facts = environment(device)
    peak = peak_tflops(device, args.peak_tflops)
    print("; ".join(f"{key} {value}" for key, value in facts.items()), flush=True)
    print(f"dense bf16 peak: {peak or 'unknown (pass --peak-tflops for MFU)'} TFLOPS; plan {plan}", flush=True)
    results = {"environment": facts, "peak_tflops": peak, "plan": dataclasses.asdict(plan), "budget_s": args.budget,
               "train": [], "beam": [], "ddp": None, "errors": {}, "skipped": []}
    save(results, args.out)
    torch.manual_seed(0)
    pairs = synthetic_pairs(plan.corpus)
    cases = [(f"train V {VOCAB} {tokens}", "train", lambda t=tokens: train_case(plan, pairs, device, VOCAB, t, peak))
             for tokens in plan.max_tokens]
    cases += [(f"beam V {VOCAB} fp32", "beam", lambda: beam_case(plan, pairs, device, VOCAB, bf16=False)),
              ("ddp", "ddp", lambda: ddp_case(plan, pairs, device, peak, timeout=120)),
              (f"beam V {VOCAB} bf16", "beam", lambda: beam_case(plan, pairs, device, VOCAB, bf16=True))]
    cases += [(f"train V {OPUS_MT_VOCAB} {tokens}", "train",
               lambda t=tokens: train_case(plan, pairs, device, OPUS_MT_VOCAB, t, peak)) for tokens in plan.max_tokens]
    cases += [(f"beam V {OPUS_MT_VOCAB} fp32", "beam", lambda: beam_case(plan, pairs, device, OPUS_MT_VOCAB, False))]
    for name, section, measure in cases:
        if time.monotonic() - started > args.budget:
            results["skipped"].append(name)
            print(f"{name}: skipped, {args.budget:.0f} s budget spent", flush=True)
            continue
        try:
            record = measure()
            if section == "ddp":
                results["ddp"] = record
            else:
                results[section].append(record)
        except Exception:  # one case's failure must not cost the others' figures
            results["errors"][name] = traceback.format_exc()
            print(f"{name}: FAILED\n{results['errors'][name]}", file=sys.stderr, flush=True)
        release(device)
        results["elapsed_s"] = time.monotonic() - started
        save(results, args.out)
        sys.stdout.flush()
    results["elapsed_s"] = time.monotonic() - started
    save(results, args.out)  # with the cases skipped after the last one that ran
    print(f"done in {time.monotonic() - started:.0f} s; {len(results['errors'])} failed, "
          f"{len(results['skipped'])} skipped" + (f"; figures in {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
