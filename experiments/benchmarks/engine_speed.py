"""Engine speed against Hugging Face's MarianMTModel, and what freezing saves: ratios from one run.

Every comparison times its two sides in turns (A, B, A, B, ... in one process, the same batches, one
warm-up call each first), so load that comes and goes on a shared machine lands on both. Each pair of
turns gives one ratio; a comparison reports each side's median, the median ratio and its spread over
the pairs (interquartile range and min..max), and marks the ratio untrusted when the interquartile
range is wider than `TRUSTED_SPREAD` of the median: run it again on a quieter machine.

The comparisons and their targets:

1. training throughput (target tokens/s of forward + backward + Adam step) of the `tiny`, `small` and
   `base` presets against a `MarianMTModel` of identical dimensions, vocabularies and batches, fused Adam
   on both sides (target >= 1.2);
2. beam-5 translation (sentences/s) against `MarianMTModel.generate` with the same beam, length penalty
   and length limits, at `small` and `base` (target >= 1.5);
3. on `base`, a new-source child's step time under `xattn` relative to `body` (target <= 0.75), and the
   optimizer state's bytes (exact, no timing; target <= 0.2, whose floor with fp32 moments is printed);
4. the pretrained path: an OPUS-MT-sized Marian model (random weights, the shapes of
   Helsinki-NLP/opus-mt-fr-en: d_model 512, 6+6 layers, a joint vocabulary of 58,101 pieces) saved as a
   Hugging Face folder and imported by `engine.pretrained`; its new-source child (8,000 new pieces) under
   `body` and `xattn` trains against a `MarianMTModel` of the same shapes with the same parameters
   frozen (target >= 1.2), and the imported parent decodes against `generate` (beam 5, target >= 1.5).

Random weights rarely emit EOS, so EOS is suppressed on both sides and both decoders run every sentence
to its length limit, the worst case and the same work. Needs the `bench` extra (transformers).

    python experiments/benchmarks/engine_speed.py [--quick] [--only train,beam,freeze,pretrained]
                                                  [--sizes tiny,small,base] [--pairs N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

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
TRAIN_TARGET, BEAM_TARGET, STEP_TARGET, STATE_TARGET = 1.2, 1.5, 0.75, 0.2
TRUSTED_SPREAD = 0.10  # a ratio whose interquartile range is wider than this share of it is not trusted


@dataclass(frozen=True)
class Comparison:
    """Two sides timed in turns: `ours[i]` and `theirs[i]` are the seconds of pair i's two calls.

    `work` is what one call does (target tokens, sentences), so a side's throughput is work / seconds.
    The ratio of a pair is theirs / ours (how many times faster ours is), or ours / theirs when
    `lower_is_better` (a step-time ratio such as xattn / body).
    """

    label: str
    ours: list[float]
    theirs: list[float]
    work: float
    unit: str
    target: float
    lower_is_better: bool = False
    names: tuple[str, str] = ("xattn-ray", "Marian")  # the two sides, as the line prints them

    @property
    def ratios(self) -> list[float]:
        return [o / t if self.lower_is_better else t / o for o, t in zip(self.ours, self.theirs)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.ratios) < 2:
            return self.ratio, self.ratio
        first, _, third = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return first, third

    @property
    def trusted(self) -> bool:
        first, third = self.quartiles
        return (third - first) <= TRUSTED_SPREAD * self.ratio

    @property
    def met(self) -> bool:
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target

    def line(self) -> str:
        first, third = self.quartiles
        rate = lambda seconds: f"{self.work / statistics.median(seconds):8.1f} {self.unit}"
        sign = "<=" if self.lower_is_better else ">="
        verdict = "met" if self.met else "NOT MET"
        trust = "" if self.trusted else "; spread too wide to trust: rerun on a quieter machine"
        digits = 3 if self.lower_is_better else 2  # a fraction near its target: 0.75 could be either side
        return (f"{self.label:<36} {self.names[0]} {rate(self.ours)} | {self.names[1]} {rate(self.theirs)} | "
                f"ratio {self.ratio:.{digits}f} (IQR {first:.{digits}f}-{third:.{digits}f}, range "
                f"{min(self.ratios):.{digits}f}-{max(self.ratios):.{digits}f}, {len(self.ratios)} pairs) "
                f"target {sign} {self.target}: {verdict}{trust}")


def alternate(ours, theirs, pairs: int) -> tuple[list[float], list[float]]:
    """Seconds of `ours()` and `theirs()` called in turns, `pairs` times each after one warm-up call each.
    The order flips every pair (A B, B A, ...), so neither side always runs on the other's warm caches."""
    ours(), theirs()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(pairs):
        order = (("ours", ours), ("theirs", theirs)) if i % 2 == 0 else (("theirs", theirs), ("ours", ours))
        for side, call in order:
            start = time.perf_counter()
            call()
            times[side].append(time.perf_counter() - start)
    return times["ours"], times["theirs"]


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



def training_step(model, batch, optimizer, marian: bool, bf16: bool = False):
    """One step on `batch` (on the model's device). `bf16`: the forward pass under bf16 autocast and the
    loss on fp32 logits, as engine/train.py trains on a GPU; off, the plain fp32 step."""
    def step():
        keep = batch.tgt_out != PAD_ID
        with torch.autocast(batch.src.device.type, dtype=torch.bfloat16, enabled=bf16):
            if marian:
                logits = model(input_ids=batch.src, attention_mask=batch.src != PAD_ID,
                               decoder_input_ids=batch.tgt_in).logits[keep]
                loss = F.cross_entropy(logits.float(), batch.tgt_out[keep], label_smoothing=0.1, reduction="sum")
            else:  # the engine's own loss (engine/train.py): blockwise on a CPU, engine/loss.py
                loss = model(batch.src, batch.tgt_in, keep, targets=batch.tgt_out[keep], label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def training_calls(model, batches, marian: bool, bf16: bool = False):
    """One call = a training step on each batch, with the engine's optimizer (fused Adam over the
    trainable parameters) for either model; `bf16` as in `training_step`."""
    model.train()
    optimizer = build_optimizer(model, TrainConfig())
    steps = [training_step(model, batch, optimizer, marian, bf16) for batch in batches]
    return lambda: [step() for step in steps]


def beam_call(model, batches, marian: bool, bad_words: bool = False):
    """One call = beam-5 translation of every batch (length penalty 1.2, limit 1.2 * source + 10)."""
    model.eval()

    def run():
        with torch.inference_mode():
            for batch in batches:
                if marian:  # the longest of our per-sentence limits
                    longest = int(1.2 * int((batch.src != PAD_ID).sum(1).max()) + 10)
                    model.generate(input_ids=batch.src, attention_mask=batch.src != PAD_ID, num_beams=5,
                                   length_penalty=1.2, max_new_tokens=longest, do_sample=False,
                                   **({"bad_words_ids": [[PAD_ID]]} if bad_words else {}))
                else:
                    beam_search(model, batch.src, beam=5, length_penalty=1.2, max_len_a=1.2, max_len_b=10)
    return run


def never_prefer_eos(model) -> None:
    """Zero the EOS output row: a random model then (almost) never ends early, like Marian's near-zero init."""
    with torch.no_grad():
        weight = model.tgt_embed.tokens.weight if isinstance(model, Transformer) else \
            model.get_output_embeddings().weight
        weight[EOS_ID].zero_()



def optimizer_state_bytes(model, batch) -> int:
    optimizer = build_optimizer(model, TrainConfig())
    training_step(model, batch, optimizer, marian=False)()
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))


def training_batches(pairs: EncodedPairs, count: int, max_tokens: int = 2048) -> list:
    return [collate(pairs, b) for b in make_batches(pairs, max_tokens, seed=0, epoch=0).group(0, count)]


def decoding_batches(pairs: EncodedPairs, sentences: int, max_tokens: int = 1024) -> list:
    some = EncodedPairs(pairs.src[:sentences], pairs.tgt[:sentences])
    return [collate(some, b) for b in make_batches(some, max_tokens, 0, 0, shuffle=False)]


def train_comparison(preset: str, pairs: EncodedPairs, turns: int) -> Comparison:
    """Measurement 1 at one preset: the same batches, fused Adam on both sides."""
    batches = training_batches(pairs, {"tiny": 8, "small": 4, "base": 2}[preset])
    ours = Transformer(preset_config(preset, VOCAB, VOCAB))
    theirs = marian_like(ours)
    seconds = alternate(training_calls(ours, batches, False), training_calls(theirs, batches, True), turns)
    return Comparison(f"train {preset}", *seconds, sum(b.target_tokens for b in batches), "tgt tok/s",
                      TRAIN_TARGET)


def beam_comparison(preset: str, pairs: EncodedPairs, turns: int) -> Comparison:
    """Measurement 2 at one preset: EOS never preferred on both sides, so every sentence runs to its limit."""
    sentences = {"small": 120, "base": 48}[preset]
    batches = decoding_batches(pairs, sentences)
    ours = Transformer(preset_config(preset, VOCAB, VOCAB))
    theirs = marian_like(ours)
    never_prefer_eos(ours), never_prefer_eos(theirs)
    seconds = alternate(beam_call(ours, batches, False), beam_call(theirs, batches, True), turns)
    return Comparison(f"beam-5 {preset}", *seconds, sentences, "sent/s", BEAM_TARGET)


def freeze_comparison(pairs: EncodedPairs, turns: int) -> Comparison:
    """Measurement 3: a `base` new-source child's step under xattn against body, and optimizer bytes."""
    parent = Transformer(preset_config("base", VOCAB, VOCAB))
    batch = collate(pairs, make_batches(pairs, 2048, seed=0, epoch=0)[0])
    children = {policy: make_child(parent, "source", VOCAB, POLICIES[policy], policy).model for policy in
                ("body", "xattn")}
    seconds = alternate(training_calls(children["xattn"], [batch], False),
                        training_calls(children["body"], [batch], False), turns)
    state = {policy: optimizer_state_bytes(child, batch) for policy, child in children.items()}
    trainable = {policy: count_parameters(child).trainable for policy, child in children.items()}
    print(f"base new-source child, optimizer state: xattn {state['xattn'] / 2**20:.0f} MiB / body "
          f"{state['body'] / 2**20:.0f} MiB = {state['xattn'] / state['body']:.3f} (target <= {STATE_TARGET}); "
          f"the floor with fp32 moments (8 bytes per trainable parameter) is the trainable ratio "
          f"{trainable['xattn']:,} / {trainable['body']:,} = {trainable['xattn'] / trainable['body']:.3f}")
    return Comparison("base child step, xattn / body", *seconds, batch.target_tokens, "tgt tok/s", STEP_TARGET,
                      lower_is_better=True, names=("xattn", "body"))


OPUS_MT = dict(d_model=512, encoder_ffn_dim=2048, decoder_ffn_dim=2048, encoder_attention_heads=8,
               decoder_attention_heads=8, encoder_layers=6, decoder_layers=6, max_position_embeddings=512)
OPUS_MT_VOCAB = 58101  # Helsinki-NLP/opus-mt-fr-en's joint vocabulary


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



def pretrained_comparisons(pairs: EncodedPairs, turns: int) -> list[Comparison]:
    """Measurement 4: an imported OPUS-MT-sized parent's children and its beam search against Marian's."""
    import tempfile
    from pathlib import Path

    from transformers import MarianConfig, MarianMTModel

    from xattn_ray.engine.pretrained import load_pretrained

    with tempfile.TemporaryDirectory() as folder:
        save_opus_mt_sized(Path(folder) / "opus-mt")
        parent = load_pretrained(str(Path(folder) / "opus-mt"), "fr", "en")[0].model
    new_vocab = 8000
    batches = training_batches(pairs, 2)
    comparisons = []
    # Which of the reference Marian child's parameters train: a new-source child never trains the target
    # side's embeddings (decoder embeddings, the tied output projection); xattn trains only the new
    # encoder embeddings and the decoder's cross-attention.
    # Marian keeps its sinusoidal positions as parameters; they never train (the engine's are a buffer).
    trains = {"body": lambda name: not name.startswith(("model.decoder.embed_tokens", "lm_head"))
              and "embed_positions" not in name,
              "xattn": lambda name: name.startswith("model.encoder.embed_tokens") or ".encoder_attn" in name}
    for policy, trained in trains.items():
        child = make_child(parent, "source", new_vocab, POLICIES[policy], policy).model
        reference = MarianMTModel(MarianConfig(
            vocab_size=new_vocab, decoder_vocab_size=OPUS_MT_VOCAB, share_encoder_decoder_embeddings=False,
            pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, activation_function="swish",
            scale_embedding=True, **OPUS_MT))
        for name, parameter in reference.named_parameters():
            parameter.requires_grad_(trained(name))
        counts = (count_parameters(child).trainable,
                  sum(p.numel() for p in reference.parameters() if p.requires_grad))
        seconds = alternate(training_calls(child, batches, False), training_calls(reference, batches, True), turns)
        comparisons.append(Comparison(f"OPUS-MT-sized child, {policy}", *seconds,
                                      sum(b.target_tokens for b in batches), "tgt tok/s", TRAIN_TARGET))
        print(f"  {policy}: trainable parameters xattn-ray {counts[0]:,}, Marian {counts[1]:,}")
        del child, reference

    marian = MarianMTModel(MarianConfig(
        vocab_size=OPUS_MT_VOCAB, decoder_vocab_size=OPUS_MT_VOCAB, share_encoder_decoder_embeddings=True,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, activation_function="swish",
        scale_embedding=True, **OPUS_MT))
    with torch.no_grad():  # never end early: both run every sentence to its length limit, the same work
        parent.tgt_embed.logits_bias[EOS_ID] = -1e4
        marian.final_logits_bias[0, EOS_ID] = -1e4
    sentences = 48
    batches = decoding_batches(pairs, sentences)
    seconds = alternate(beam_call(parent, batches, False), beam_call(marian, batches, True, bad_words=True),
                        max(3, turns - 2))
    comparisons.append(Comparison("OPUS-MT-sized parent, beam-5", *seconds, sentences, "sent/s", BEAM_TARGET))
    return comparisons


SECTIONS = ("train", "beam", "freeze", "pretrained")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 pairs of turns instead of 7 (a smoke run)")
    parser.add_argument("--pairs", type=int, help="pairs of turns per comparison (default 7; --quick: 3)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated of {', '.join(SECTIONS)}")
    parser.add_argument("--sizes", default="tiny,small,base", help="presets for train and beam")
    args = parser.parse_args()
    turns = args.pairs or (3 if args.quick else 7)
    sections = args.only.split(",")
    sizes = args.sizes.split(",")
    unknown = sorted(set(sections) - set(SECTIONS)) + sorted(set(sizes) - {"tiny", "small", "base"})
    if unknown:
        parser.error(f"unknown section or size: {', '.join(unknown)}")
    torch.manual_seed(0)
    pairs = synthetic_pairs(400)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vocabularies {VOCAB}/{VOCAB}; "
          f"{turns} pairs of turns per comparison")
    comparisons = []

    def measured(comparison: Comparison) -> None:
        comparisons.append(comparison)
        print(comparison.line(), flush=True)

    if "train" in sections:
        for preset in sizes:
            measured(train_comparison(preset, pairs, turns))
    if "beam" in sections:
        for preset in (size for size in sizes if size != "tiny"):
            measured(beam_comparison(preset, pairs, max(3, turns - 2)))
    if "freeze" in sections:
        measured(freeze_comparison(pairs, turns))
    if "pretrained" in sections:
        for comparison in pretrained_comparisons(pairs, turns):
            measured(comparison)
    met = sum(c.met for c in comparisons)
    untrusted = [c.label for c in comparisons if not c.trusted]
    print(f"summary: {met} of {len(comparisons)} targets met" +
          (f"; spread too wide to trust: {', '.join(untrusted)}" if untrusted else "; every spread within "
           f"{TRUSTED_SPREAD:.0%} of its ratio"))


if __name__ == "__main__":
    main()
