"""Tiny random Marian (OPUS-MT-shaped) models for the tests, saved as a Hugging Face folder.

Nothing is downloaded: `transformers` builds the model from a config, a real SentencePiece model is
trained on the given text, and `save_pretrained` writes the weights beside OPUS-MT's tokenizer files
(source.spm, target.spm, one joint vocab.json with </s> 0, <unk> 1 and <pad> last).
"""

import json
import shutil
from pathlib import Path

import sentencepiece as spm
import torch

TINY_DIMENSIONS = dict(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_layers=2, decoder_layers=2, max_position_embeddings=128)


def save_tiny_marian(folder: Path, lines: list[str], vocab_size: int = 150, seed: int = 0,
                     eos_boost: float = 0.0, init_std: float = 0.02, **dimensions) -> Path:
    """Train a joint SentencePiece model on `lines`, build a random MarianMTModel over its pieces, save both.

    `eos_boost` adds to </s>'s final logits bias so that random models end sentences at varied lengths
    (the other entries of the bias are small random numbers, so the bias is really tested).
    """
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "spm-work"
    work.mkdir(exist_ok=True)
    (work / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "text.txt"), model_prefix=str(work / "joint"), vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=1, pad_id=-1, num_threads=1, minloglevel=2)
    for name in ("source.spm", "target.spm"):
        shutil.copy(work / "joint.model", folder / name)
    processor = spm.SentencePieceProcessor(model_file=str(work / "joint.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())
              if not (processor.is_control(i) or processor.is_unknown(i))]
    vocab = {"</s>": 0, "<unk>": 1, **{piece: 2 + i for i, piece in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(work)

    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(vocab), pad_token_id=vocab["<pad>"], eos_token_id=0,
        decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0, activation_function="swish",
        scale_embedding=True, share_encoder_decoder_embeddings=True, init_std=init_std, dropout=0.1, attention_dropout=0.0,
        **{**TINY_DIMENSIONS, **dimensions})
    model = MarianMTModel(config)
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.1)
        model.final_logits_bias[0, 0] += eos_boost
    model.save_pretrained(folder)
    MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json")
                    ).save_pretrained(folder)
    return folder
