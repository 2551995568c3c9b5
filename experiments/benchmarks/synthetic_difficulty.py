"""How hard is the synthetic family? Train a model for a fixed wall-time budget and score it.

The family must be a real test: a `tiny` model should NOT reach near-perfect BLEU within a minute of
CPU training, while a `small` model should reach a clearly useful BLEU in a few minutes. This script
trains the quickstart's parent pair (la -> pv, 20k sentences) with each preset for its budget and
prints test BLEU (beam 5) and chrF.

    python experiments/benchmarks/synthetic_difficulty.py --tiny-seconds 60 --small-seconds 300
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from xattn_ray.data.shards import pair_shard
from xattn_ray.engine.batching import encode_pairs
from xattn_ray.engine.evaluate import score_test_set
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.tokenizer import train_tokenizer
from xattn_ray.engine.train import TrainConfig, TrainingData, train
from xattn_ray.study.config import load_experiment
from xattn_ray.study.transfer import load_run_data

EXPERIMENT = Path(__file__).resolve().parents[1] / "quickstart.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-seconds", type=float, default=60)
    parser.add_argument("--small-seconds", type=float, default=300)
    parser.add_argument("--presets", default="tiny,small", help="which presets to run (default: %(default)s)")
    parser.add_argument("--storage", type=Path, default=Path(tempfile.gettempdir()) / "xattn-difficulty")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    experiment = load_experiment(EXPERIMENT)
    cache = args.storage / "cache"
    data = load_run_data(experiment, experiment.parents[0], cache)
    src_tok = train_tokenizer(data.pair.src, data.train.side(0), experiment.tokenizer, cache / "spm")
    tgt_tok = train_tokenizer(data.pair.tgt, data.train.side(1), experiment.tokenizer, cache / "spm")
    test = data.tests["test"]
    print(f"pair {data.pair}: {data.train.scan().kept} training pairs, vocabularies {src_tok.vocab_size}/{tgt_tok.vocab_size}, "
          f"{torch.get_num_threads()} threads")
    # Short warmups: a budget of minutes holds only a few hundred updates of the small model.
    for preset, seconds, lr, warmup in (("tiny", args.tiny_seconds, 3e-3, 100),
                                        ("small", args.small_seconds, 1e-3, 100)):
        if preset not in args.presets.split(","):
            continue
        torch.manual_seed(1)
        model = Transformer(preset_config(preset, src_tok.vocab_size, tgt_tok.vocab_size))
        training = TrainingData(pair_shard(data.train, src_tok, tgt_tok, model.config.max_positions, cache),
                                encode_pairs(data.valid.src, data.valid.tgt, src_tok, tgt_tok, model.config.max_positions),
                                src_tok, tgt_tok)
        config = TrainConfig(lr=lr, warmup_updates=warmup, max_tokens=2048, max_seconds=seconds,
                             validate_every=200, patience=0)
        result = train(model, training, config, args.storage / preset)
        scores = score_test_set(model, src_tok, tgt_tok, test.src, test.tgt, beam=5)
        print(f"{preset:<6} {seconds:>5.0f} s of training: {result.progress.update} updates, "
              f"valid nll {result.progress.history[-1]['valid_loss']:.3f}, "
              f"test BLEU {scores.bleu.score:.1f}, chrF {scores.chrf.score:.1f}  ({scores.bleu.signature})")


if __name__ == "__main__":
    main()
