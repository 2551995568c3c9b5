"""Pretrained translation models as engine models: a Marian (OPUS-MT) checkpoint, imported exactly.

Researchers start from public models such as `Helsinki-NLP/opus-mt-fr-en`. Rather than wrapping
Hugging Face's model behind the engine, the import copies its weights into the engine's own
`Transformer`, built with the options that make it compute the same function (`ModelConfig`:
`norm: post`, `positions: sinusoidal`, `scale_embedding`, no `embedding_norm`, `activation: silu`,
`logits_bias`). So one model class serves every policy, the KV-cache beam search, forgetting,
stitching and lexicon induction, and parameter names mean the same on every parent.

Marian's conventions and how they land here:

    Marian                                         engine
    one joint vocabulary (vocab.json), ids by      the same pieces, reordered so PAD BOS EOS UNK are
    that file, <pad> last, </s> 0, <unk> 1         ids 0..3 (`tokenizer.py` keeps a `vocabulary`)
    decoder starts from <pad>                      BOS's embedding row is <pad>'s
    tied encoder/decoder/output embeddings         a copy in `src_embed` and in `tgt_embed` (a child
                                                   replaces one side, the other keeps the original)
    final_logits_bias (a buffer)                   `tgt_embed.logits_bias`, reordered like the rows
    source.spm / target.spm cut text into pieces   each side's Tokenizer holds its own .spm
    generate() never emits <pad> (bad_words_ids)   decoding never emits PAD or BOS

Not carried over: Moses punctuation normalisation (MarianTokenizer applies it when `sacremoses` is
installed) and the `>>xx<<` target-language tokens of multilingual models (a source line that starts
with one keeps it as text). Only Marian models are imported: the BART family (mBART-50, M2M-100,
NLLB) adds language tokens on both sides and offset positions, which this path does not cover.

Loading uses `transformers` (the `hf` extra): a local folder saved by `save_pretrained` with its
tokenizer files, or a hub id, from the Hugging Face cache (offline with `HF_HUB_OFFLINE=1`) or
downloaded when there is a network.

Shapes: V vocabulary size, D d_model.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from xattn_ray.engine.checkpoint import LoadedModel, file_sha256
from xattn_ray.engine.model import ModelConfig, Transformer
from xattn_ray.engine.tokenizer import Tokenizer
from xattn_ray.errors import XattnError

SUPPORTED = ("marian",)  # model_type values of config.json this module imports
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = {"swish": "silu", "silu": "silu", "relu": "relu", "gelu": "gelu"}  # Hugging Face name -> ours

# The ModelConfig options of every imported Marian model (its sizes come from its config.json).
PRETRAINED_ARCHITECTURE = dict(norm="post", positions="sinusoidal", scale_embedding=True, embedding_norm=False,
                               activation="silu", logits_bias=True)

# Hugging Face's names inside a Marian layer -> the engine's (model.py's docstring lists them).
LAYER_NAMES = {
    "self_attn_layer_norm": "self_attn_norm", "encoder_attn": "cross_attn",
    "encoder_attn_layer_norm": "cross_attn_norm", "final_layer_norm": "ffn_norm", "fc1": "ffn.fc1", "fc2": "ffn.fc2",
}


class PretrainedError(XattnError):
    """A pretrained model that cannot be found, read or imported."""


@dataclass(frozen=True)
class Provenance:
    """Where an imported parent came from: what the user named and the hash of the files read."""

    model: str  # the local folder or hub id, as given
    files_sha256: str  # over the files read (config, weights, tokenizer files), by name


def load_pretrained(source: str, src_lang: str, tgt_lang: str) -> tuple[LoadedModel, Provenance]:
    """The engine model and tokenizers of the Marian model `source` (a folder or a hub id).

    `src_lang` / `tgt_lang` name the tokenizers' languages (the experiment's pair). Raises
    PretrainedError in one line naming `source` when transformers is missing, a file cannot be found,
    or the model is not one this module imports.
    """
    files = _resolve_files(source)
    config = _marian_config(source, files)
    src_order, src_vocabulary = _vocabulary(source, files["vocab.json"], config)
    tgt_order, tgt_vocabulary = _vocabulary(source, files.get("target_vocab.json", files["vocab.json"]), config)
    model = Transformer(_model_config(source, config, len(src_vocabulary), len(tgt_vocabulary)))
    state = _engine_state(source, files, src_order, tgt_order)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [name for name in set(expected) & set(state) if expected[name].shape != state[name].shape]
    if missing or unexpected or wrong:
        raise PretrainedError(f"{source}: the weights do not fit a Marian model of its config.json "
                              f"(missing {missing[:2]}, unexpected {unexpected[:2]}, wrong shape {wrong[:2]})")
    model.load_state_dict(state)
    provenance = Provenance(model=source, files_sha256=_files_sha256(files))  # cached: planning hashed them
    metadata = {"pretrained": source, "files_sha256": provenance.files_sha256}
    src_tokenizer = Tokenizer(src_lang, files["source.spm"].read_bytes(), dict(metadata), src_vocabulary)
    tgt_tokenizer = Tokenizer(tgt_lang, files["target.spm"].read_bytes(), dict(metadata), tgt_vocabulary)
    extra = {"pretrained": source, "files_sha256": provenance.files_sha256}
    return LoadedModel(model, src_tokenizer, tgt_tokenizer, extra), provenance


def is_hub_id(source: str) -> bool:
    """Whether `source` has the form of a hub id, `owner/name` (a folder path may too: folders win)."""
    return not source.startswith((".", "~", "/")) and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None


def pretrained_files_sha256(source: str) -> str:
    """The hash of the model's files (`Provenance.files_sha256`) without building the model."""
    return _files_sha256(_resolve_files(source))


def pretrained_config(source: str) -> ModelConfig:
    """The engine's ModelConfig of the Marian model `source`, read from its config and vocabularies alone
    (no weights are read): what `xattn-ray policies --pretrained` lists the groups of."""
    files = _resolve_files(source)
    config = _marian_config(source, files)
    sizes = [len(_vocabulary(source, files.get(name, files["vocab.json"]), config)[1])
             for name in ("vocab.json", "target_vocab.json")]
    return _model_config(source, config, *sizes)


def _marian_config(source: str, files: dict[str, Path]) -> dict:
    """The model's config.json, which must describe a model type this module imports."""
    try:
        config = json.loads(files["config.json"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PretrainedError(f"{files['config.json']}: not a readable config: {err}") from None
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise PretrainedError(f"{source}: model_type {found!r} is not supported (supported: {', '.join(SUPPORTED)})")
    return config


def _resolve_files(source: str) -> dict[str, Path]:
    """The paths of the model's files, from a local folder or through the Hugging Face cache."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        found = {path.name: path for path in folder.iterdir() if path.is_file()}
    else:
        if not is_hub_id(source):
            raise PretrainedError(f"{source}: no such folder, and not a hub id of the form owner/name")
        found = _from_hub(source)
    weights = next((found[name] for name in WEIGHT_FILES if name in found), None)
    missing = [name for name in ("config.json", *TOKENIZER_FILES) if name not in found]
    if weights is None:
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise PretrainedError(f"{source}: missing {', '.join(missing)} (a Marian model saved with its tokenizer)")
    return {name: path for name, path in found.items() if name in ("config.json", *TOKENIZER_FILES,
                                                                     "target_vocab.json")} | {"weights": weights}


def _from_hub(source: str) -> dict[str, Path]:
    """The files of hub model `source`, from the cache or downloaded (offline: the cache only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PretrainedError(f"{source}: loading a pretrained model needs transformers: "
                              f"pip install -e \".[hf]\"") from None
    try:
        folder = Path(snapshot_download(source, allow_patterns=["config.json", *TOKENIZER_FILES,
                                                                 "target_vocab.json", *WEIGHT_FILES]))
    except Exception as err:  # noqa: BLE001 - the hub client raises many kinds (offline, 404, auth)
        raise PretrainedError(f"{source}: cannot get the model from the Hugging Face hub or its cache: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    return {path.name: path for path in folder.iterdir() if path.is_file()}


def _vocabulary(source: str, vocab_file: Path, config: dict) -> tuple[list[int], list[str]]:
    """(order, pieces): Marian's ids in the engine's order, and the pieces in that order.

    The engine's ids 0..3 are PAD, BOS, EOS and UNK; BOS is Marian's decoder start (its <pad>). Every
    other piece keeps its relative order.
    """
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PretrainedError(f"{vocab_file}: not a readable vocabulary: {err}") from None
    if not isinstance(vocab, dict) or "<unk>" not in vocab:
        raise PretrainedError(f"{vocab_file}: a Marian vocabulary maps pieces to ids and has <unk>")
    by_id = {index: piece for piece, index in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise PretrainedError(f"{vocab_file}: the ids are not 0..{len(by_id) - 1}")
    pad, eos = config.get("pad_token_id"), config.get("eos_token_id")
    start = config.get("decoder_start_token_id", pad)
    special = [pad, start, eos, vocab["<unk>"]]
    if not all(isinstance(index, int) and index in by_id for index in special):
        raise PretrainedError(f"{source}: pad, decoder start and eos token ids {special[:3]} are not in "
                              f"{vocab_file.name}")
    order = special + [index for index in range(len(by_id)) if index not in set(special)]
    return order, ["<pad>", "<s>", "</s>", "<unk>"] + [by_id[index] for index in order[4:]]


def _model_config(source: str, config: dict, src_vocab: int, tgt_vocab: int) -> ModelConfig:
    """The engine's ModelConfig for a Marian config.json."""
    if config.get("encoder_ffn_dim") != config.get("decoder_ffn_dim") or \
            config.get("encoder_attention_heads") != config.get("decoder_attention_heads"):
        raise PretrainedError(f"{source}: encoder and decoder of different widths are not supported")
    activation = ACTIVATIONS.get(config.get("activation_function", "swish"))
    if activation is None:
        raise PretrainedError(f"{source}: activation {config.get('activation_function')!r} is not supported "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    if config.get("normalize_before") or config.get("add_final_layer_norm") or config.get("normalize_embedding"):
        raise PretrainedError(f"{source}: a pre-norm Marian variant is not supported")
    return ModelConfig(
        src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, d_model=config["d_model"],
        ffn_dim=config["encoder_ffn_dim"], heads=config["encoder_attention_heads"],
        encoder_layers=config["encoder_layers"], decoder_layers=config["decoder_layers"],
        max_positions=config["max_position_embeddings"], dropout=config.get("dropout", 0.1),
        attention_dropout=config.get("attention_dropout", 0.0),
        activation_dropout=config.get("activation_dropout", 0.0), norm="post", positions="sinusoidal",
        scale_embedding=bool(config.get("scale_embedding", True)), embedding_norm=False, activation=activation,
        logits_bias=True)


def _engine_state(source: str, files: dict[str, Path], src_order: list[int],
                  tgt_order: list[int]) -> dict[str, torch.Tensor]:
    """The engine's state dict from Marian's weights: names mapped, vocabulary rows reordered."""
    hf = _read_weights(source, files["weights"])
    state: dict[str, torch.Tensor] = {}
    prefix = "model."
    hf = {name[len(prefix):] if name.startswith(prefix) else name: tensor for name, tensor in hf.items()}
    shared = hf.get("shared.weight")
    encoder_tokens = hf.get("encoder.embed_tokens.weight", shared)
    decoder_tokens = hf.get("decoder.embed_tokens.weight", shared)
    if encoder_tokens is None or decoder_tokens is None:
        raise PretrainedError(f"{files['weights']}: no token embeddings (shared.weight or *.embed_tokens.weight)")
    output = hf.get("lm_head.weight", decoder_tokens)
    if not torch.equal(output, decoder_tokens):
        raise PretrainedError(f"{source}: the output layer is not tied to the decoder's embeddings, which "
                              f"the engine's model requires")
    state["src_embed.tokens.weight"] = encoder_tokens[src_order]
    state["tgt_embed.tokens.weight"] = decoder_tokens[tgt_order]
    bias = hf.get("final_logits_bias", torch.zeros(1, len(tgt_order)))
    state["tgt_embed.logits_bias"] = bias.reshape(-1)[tgt_order]
    for name, tensor in hf.items():
        match = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)", name)
        if match:
            stack, layer, module, rest = match.groups()
            state[f"{stack}.layers.{layer}.{LAYER_NAMES.get(module, module)}.{rest}"] = tensor
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def _read_weights(source: str, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (safetensors, or torch's format read without running code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise PretrainedError(f"{source}: reading {path.name} needs safetensors: pip install -e \".[hf]\"") from None
    except Exception as err:  # noqa: BLE001 - both readers raise several kinds on a damaged file
        raise PretrainedError(f"{path}: not a readable weights file: {type(err).__name__}") from None


def _files_sha256(files: dict[str, Path]) -> str:
    """One SHA-256 over the files read, each as its name and its own sha256, in name order (each file is
    read once per process for the same size and modification time: `checkpoint.file_sha256`)."""
    return hashlib.sha256("".join(f"{files[name].name}\0{file_sha256(files[name])}\n"
                                  for name in sorted(files)).encode()).hexdigest()
