"""Engine speed against Hugging Face's MarianMTModel, and what freezing saves: ratios from one run.

Three measurements, each a median over repeated timings on the same machine in the same process:

1. training throughput (target tokens/s for forward + backward + Adam step) of the `small` and `base`
   presets against a `MarianMTModel` of identical dimensions, vocabularies and batches (target >= 1.1);
2. beam-5 translation throughput (sentences/s) against `MarianMTModel.generate` with the same beam,
   length penalty and maximum lengths (target >= 1.5);
3. on `base`, the step time and optimizer-state bytes of the `xattn` policy relative to `body` for a
   new-source child (targets <= 0.75 and <= 0.2);
4. the pretrained path: an OPUS-MT-sized Marian model (random weights, the shapes of
   Helsinki-NLP/opus-mt-fr-en: d_model 512, 6+6 layers, a joint vocabulary of 58,101 pieces) saved as a
   Hugging Face folder and imported by `engine.pretrained`; its `xattn` new-source child (8,000 new
   pieces) trains against a `MarianMTModel` of the same shapes with the same parameters frozen (target
   tokens/s ratio >= 1.1), and the imported parent decodes against `generate` (beam 5, ratio >= 1.5).
   The two sides alternate, step by step, so load on the machine hits both.

Random weights: a random model rarely emits EOS, so both decoders run to their maximum length, the
worst case, which is the same work for both. Needs the `bench` extra (transformers).

    python experiments/benchmarks/engine_speed.py [--quick] [--only pretrained]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from xattn_ray.engine.batching import EncodedPairs, collate, make_batches
from xattn_ray.engine.decode import beam_search
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.policies import POLICIES, count_parameters
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID
from xattn_ray.engine.train import TrainConfig, build_optimizer
from xattn_ray.engine.transfer import make_child

VOCAB = 8000


def synthetic_pairs(n: int, seed: int = 0) -> EncodedPairs:
    """Random ids with Multi30k-like lengths (8-30 subwords a side, target about source length)."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        length = rng.randint(8, 30)
        src.append([rng.randrange(4, VOCAB) for _ in range(length)] + [EOS_ID])
        tgt.append([rng.randrange(4, VOCAB) for _ in range(max(3, length + rng.randint(-3, 3)))] + [EOS_ID])
    return EncodedPairs(src, tgt)


def marian_like(model: Transformer):
    """A MarianMTModel with the same dimensions, separate vocabularies and dropout."""
    from transformers import MarianConfig, MarianMTModel

    c = model.config
    config = MarianConfig(
        vocab_size=c.src_vocab_size, decoder_vocab_size=c.tgt_vocab_size, share_encoder_decoder_embeddings=False,
        d_model=c.d_model, encoder_ffn_dim=c.ffn_dim, decoder_ffn_dim=c.ffn_dim, encoder_attention_heads=c.heads,
        decoder_attention_heads=c.heads, encoder_layers=c.encoder_layers, decoder_layers=c.decoder_layers,
        max_position_embeddings=c.max_positions, dropout=c.dropout, attention_dropout=c.attention_dropout,
        activation_function="relu", pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None, scale_embedding=False)
    return MarianMTModel(config)


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(model, batch, optimizer, marian: bool):
    def step():
        keep = batch.tgt_out != PAD_ID
        if marian:
            logits = model(input_ids=batch.src, attention_mask=batch.src != PAD_ID,
                           decoder_input_ids=batch.tgt_in).logits[keep]
        else:
            logits = model(batch.src, batch.tgt_in, keep)
        F.cross_entropy(logits, batch.tgt_out[keep], label_smoothing=0.1, reduction="sum").backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def training_throughput(model, batches, marian: bool, repeats: int, fused: bool) -> float:
    """Target tokens/s; `fused` picks the engine's optimizer (fused Adam) over torch's default Adam."""
    model.train()
    optimizer = build_optimizer(model, TrainConfig()) if fused else \
        torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = sum(b.target_tokens for b in batches)
    steps = [training_step(model, b, optimizer, marian) for b in batches]
    return tokens / median_seconds(lambda: [s() for s in steps], repeats)


def optimizer_state_bytes(model, batch) -> int:
    optimizer = build_optimizer(model, TrainConfig())
    training_step(model, batch, optimizer, marian=False)()
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))


def never_prefer_eos(model) -> None:
    """Zero the EOS output row: a random model then (almost) never ends early, like Marian's near-zero init."""
    with torch.no_grad():
        weight = model.tgt_embed.tokens.weight if isinstance(model, Transformer) else \
            model.get_output_embeddings().weight
        weight[EOS_ID].zero_()


def beam_throughput(model, batches, marian: bool, repeats: int) -> float:
    never_prefer_eos(model)
    model.eval()
    sentences = sum(b.src.shape[0] for b in batches)

    def run():
        with torch.inference_mode():
            for batch in batches:
                if marian:  # the longest of our per-sentence limits, 1.2 * source length + 10
                    longest = int(1.2 * int((batch.src != PAD_ID).sum(1).max()) + 10)
                    model.generate(input_ids=batch.src, attention_mask=batch.src != PAD_ID, num_beams=5,
                                   length_penalty=1.2, max_new_tokens=longest, do_sample=False)
                else:
                    beam_search(model, batch.src, beam=5, length_penalty=1.2, max_len_a=1.2, max_len_b=10)

    return sentences / median_seconds(run, repeats)


OPUS_MT = dict(d_model=512, encoder_ffn_dim=2048, decoder_ffn_dim=2048, encoder_attention_heads=8,
               decoder_attention_heads=8, encoder_layers=6, decoder_layers=6, max_position_embeddings=512)
OPUS_MT_VOCAB = 58101  # Helsinki-NLP/opus-mt-fr-en's joint vocabulary


def alternating_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of `first()` and of `second()`, timed in turns (after one warm-up call each)."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for side, call in enumerate((first, second)):
            start = time.perf_counter()
            call()
            times[side].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def save_opus_mt_sized(folder) -> None:
    """A random Marian model of OPUS-MT's shapes, saved with tokenizer files as `save_pretrained` does."""
    import json

    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel

    folder.mkdir(parents=True)
    text = folder / "text.txt"
    text.write_text("".join(f"w{i % 97} x{i % 13} y{i % 7} z{i % 31}\n" for i in range(2000)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "joint"), vocab_size=30,
                                   minloglevel=2)
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes((folder / "joint.model").read_bytes())
    vocab = {"</s>": 0, "<unk>": 1, **{f"\u2581p{i}": i for i in range(2, OPUS_MT_VOCAB - 1)},
             "<pad>": OPUS_MT_VOCAB - 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    config = MarianConfig(vocab_size=OPUS_MT_VOCAB, decoder_vocab_size=OPUS_MT_VOCAB, pad_token_id=OPUS_MT_VOCAB - 1,
                          eos_token_id=0, decoder_start_token_id=OPUS_MT_VOCAB - 1, activation_function="swish",
                          scale_embedding=True, share_encoder_decoder_embeddings=True, **OPUS_MT)
    MarianMTModel(config).save_pretrained(folder)


def pretrained_section(pairs: EncodedPairs, repeats: int) -> None:
    """Measurement 4: an imported OPUS-MT-sized parent and its xattn child against MarianMTModel."""
    import tempfile
    from pathlib import Path

    from transformers import MarianConfig, MarianMTModel

    from xattn_ray.engine.pretrained import load_pretrained

    with tempfile.TemporaryDirectory() as folder:
        save_opus_mt_sized(Path(folder) / "opus-mt")
        parent = load_pretrained(str(Path(folder) / "opus-mt"), "fr", "en")[0].model
    new_vocab = 8000
    child = make_child(parent, "source", new_vocab, POLICIES["xattn"], "xattn").model.train()
    # The reference child: Marian with its own 8,000-piece encoder vocabulary, the same groups trainable.
    reference = MarianMTModel(MarianConfig(
        vocab_size=new_vocab, decoder_vocab_size=OPUS_MT_VOCAB, share_encoder_decoder_embeddings=False,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, activation_function="swish",
        scale_embedding=True, **OPUS_MT)).train()
    for name, parameter in reference.named_parameters():
        parameter.requires_grad_(name.startswith("model.encoder.embed_tokens") or ".encoder_attn" in name)
    trainable = (count_parameters(child).trainable, sum(p.numel() for p in reference.parameters() if p.requires_grad))
    batches = [collate(pairs, b) for b in make_batches(pairs, 2048, seed=0, epoch=0).group(0, 2)]
    tokens = sum(b.target_tokens for b in batches)
    ours_steps = [training_step(child, b, build_optimizer(child, TrainConfig()), marian=False) for b in batches]
    theirs_optimizer = torch.optim.Adam([p for p in reference.parameters() if p.requires_grad], lr=1e-4)
    theirs_steps = [training_step(reference, b, theirs_optimizer, marian=True) for b in batches]
    ours_s, theirs_s = alternating_medians(lambda: [s() for s in ours_steps], lambda: [s() for s in theirs_steps],
                                           repeats)
    print(f"pretrained xattn child (OPUS-MT size, trainable {trainable[0]:,} / Marian {trainable[1]:,}): "
          f"xattn-ray {tokens / ours_s:6.0f} tgt tok/s | Marian + torch Adam {tokens / theirs_s:6.0f} | "
          f"ratio {theirs_s / ours_s:.2f} (target >= 1.1)")
    del child, reference

    marian = MarianMTModel(MarianConfig(
        vocab_size=OPUS_MT_VOCAB, decoder_vocab_size=OPUS_MT_VOCAB, share_encoder_decoder_embeddings=True,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, activation_function="swish",
        scale_embedding=True, **OPUS_MT)).eval()
    with torch.no_grad():  # never end early: both run every sentence to its length limit, the same work
        parent.tgt_embed.logits_bias[EOS_ID] = -1e4
        marian.final_logits_bias[0, EOS_ID] = -1e4
    parent.eval()
    decode_pairs = EncodedPairs(pairs.src[:48], pairs.tgt[:48])
    decode_batches = [collate(decode_pairs, b) for b in make_batches(decode_pairs, 1024, 0, 0, shuffle=False)]

    def decode(model, hf: bool):
        def run():
            with torch.inference_mode():
                for batch in decode_batches:
                    if hf:
                        longest = int(1.2 * int((batch.src != PAD_ID).sum(1).max()) + 10)
                        model.generate(input_ids=batch.src, attention_mask=batch.src != PAD_ID, num_beams=5,
                                       length_penalty=1.2, max_new_tokens=longest, do_sample=False,
                                       bad_words_ids=[[PAD_ID]])
                    else:
                        beam_search(model, batch.src, beam=5, length_penalty=1.2, max_len_a=1.2, max_len_b=10)
        return run

    ours_s, theirs_s = alternating_medians(decode(parent, False), decode(marian, True), max(1, repeats - 2))
    sentences = len(decode_pairs.src)
    print(f"pretrained parent beam-5 (OPUS-MT size): xattn-ray {sentences / ours_s:5.1f} sent/s | Marian generate "
          f"{sentences / theirs_s:5.1f} | ratio {theirs_s / ours_s:.2f} (target >= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, noisier)")
    parser.add_argument("--only", choices=["pretrained"], help="run only this measurement")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    torch.manual_seed(0)
    pairs = synthetic_pairs(400)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vocabularies {VOCAB}/{VOCAB}")
    if args.only == "pretrained":
        pretrained_section(pairs, repeats)
        return

    for preset, n_batches in (("small", 4), ("base", 2)):
        batches = [collate(pairs, b) for b in make_batches(pairs, 2048, seed=0, epoch=0).group(0, n_batches)]
        ours = Transformer(preset_config(preset, VOCAB, VOCAB))
        theirs = marian_like(ours)
        ours_tps = training_throughput(ours, batches, marian=False, repeats=repeats, fused=True)
        theirs_tps = training_throughput(theirs, batches, marian=True, repeats=repeats, fused=False)
        # The same fused optimizer for both isolates the models' own forward/backward cost.
        theirs_fused_tps = training_throughput(theirs, batches, marian=True, repeats=repeats, fused=True)
        print(f"train {preset:<5}: xattn-ray {ours_tps:7.0f} tgt tok/s | Marian + torch Adam {theirs_tps:7.0f} | "
              f"ratio {ours_tps / theirs_tps:.2f} (target >= 1.1) | Marian + fused Adam {theirs_fused_tps:7.0f}, "
              f"ratio {ours_tps / theirs_fused_tps:.2f}")
        if preset == "small":
            decode_pairs = EncodedPairs(pairs.src[:120], pairs.tgt[:120])
            decode_batches = [collate(decode_pairs, b) for b in make_batches(decode_pairs, 1024, 0, 0, shuffle=False)]
            ours_sps = beam_throughput(ours, decode_batches, marian=False, repeats=max(1, repeats - 2))
            theirs_sps = beam_throughput(theirs, decode_batches, marian=True, repeats=max(1, repeats - 2))
            print(f"beam-5 {preset}: xattn-ray {ours_sps:6.1f} sent/s | Marian generate {theirs_sps:6.1f} | "
                  f"ratio {ours_sps / theirs_sps:.2f} (target >= 1.5)")
        del theirs

    parent = Transformer(preset_config("base", VOCAB, VOCAB))
    batch = collate(pairs, make_batches(pairs, 2048, seed=0, epoch=0)[0])
    results = {}
    for policy in ("body", "xattn"):
        child = make_child(parent, "source", VOCAB, POLICIES[policy], policy).model.train()
        optimizer = build_optimizer(child, TrainConfig())
        results[policy] = (median_seconds(training_step(child, batch, optimizer, marian=False), repeats),
                           optimizer_state_bytes(child, batch), count_parameters(child).trainable)
    (body_s, body_bytes, body_trainable), (xattn_s, xattn_bytes, xattn_trainable) = results["body"], results["xattn"]
    print(f"base new-source child: step xattn {xattn_s * 1000:.0f} ms / body {body_s * 1000:.0f} ms = "
          f"{xattn_s / body_s:.2f} (target <= 0.75); optimizer state {xattn_bytes / 2**20:.0f} MiB / "
          f"{body_bytes / 2**20:.0f} MiB = {xattn_bytes / body_bytes:.3f} (target <= 0.2)")
    # fp32 Adam keeps two moments per trainable parameter: 8 bytes each, nothing for frozen ones. The
    # ratio can only go below trainable(xattn) / trainable(body) with lower-precision moments.
    print(f"  optimizer bytes per trainable parameter: xattn {xattn_bytes / xattn_trainable:.2f}, body "
          f"{body_bytes / body_trainable:.2f}; floor for fp32 moments = trainable ratio "
          f"{xattn_trainable:,} / {body_trainable:,} = {xattn_trainable / body_trainable:.3f}")
    pretrained_section(pairs, repeats)


if __name__ == "__main__":
    main()
