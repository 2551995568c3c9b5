"""Model checkpoints that carry their architecture and both tokenizers.

A checkpoint is one file holding the model config, the weights, and the serialized SentencePiece
models of both sides (a few hundred KB), so a checkpoint copied alone to another machine of a cluster
rebuilds its model and tokenizers. Only plain types are stored, so loading uses
`torch.load(weights_only=True)`, which executes no code from the file.

A child's checkpoint is a delta: it stores only the tensors that differ from its parent's checkpoint
(the trained groups, the new embeddings) and names that checkpoint by path (relative to its own folder,
so a storage folder can move) and sha256. Loading resolves the parent and refuses, in one line, one that
is missing or changed. An `xattn` child of `base` takes about a fifth of a full checkpoint.

Every file a user names may be anything: loading checks what it reads (`read_checkpoint`, then the
config, the weights' names and shapes, the tokenizers) and tells what is wrong in one line naming the
file, a `CheckpointError`, before any model is built from it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import re
import tempfile
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xattn_ray.engine.model import ModelConfig, Transformer, config_differences
from xattn_ray.engine.tokenizer import Tokenizer
from xattn_ray.errors import XattnError
from xattn_ray.schema import Invalid

CHECKPOINT_FORMAT = 1
MODEL_KEYS = ("model_config", "state_dict", "tokenizers")  # besides `format`; `extra` is optional

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class CheckpointError(XattnError):
    """A checkpoint that is missing, unreadable, or built for another architecture."""


@dataclass(frozen=True)
class DeltaBase:
    """The checkpoint a delta checkpoint is written against, with its full state loaded once."""

    path: Path
    sha256: str
    state: dict[str, torch.Tensor]

    def reference(self, delta_path: Path) -> dict[str, str]:
        """What a delta at `delta_path` stores of its base: where it is and what it was."""
        absolute = self.path.resolve()
        return {"path": os.path.relpath(absolute, delta_path.resolve().parent), "absolute": str(absolute),
                "sha256": self.sha256}

    def delta(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of `state` that the base lacks or holds with another shape or value."""
        return {name: tensor for name, tensor in state.items()
                if name not in self.state or self.state[name].shape != tensor.shape
                or not torch.equal(self.state[name], tensor.to(self.state[name].device))}


def delta_base(path: Path) -> DeltaBase:
    """The model checkpoint at `path` (itself full or a delta) as the base of a child's delta checkpoints."""
    path = Path(path)
    return DeltaBase(path, file_sha256(path), _model_state(path, read_checkpoint(path, ("state_dict",))))


def file_sha256(path: Path) -> str:
    """The sha256 of a file, computed once per process for the same size and modification time."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_state(path: Path, payload: dict, key: str = "state_dict", depth: int = 0) -> dict[str, torch.Tensor]:
    """The full model state of a checkpoint's `key`: the stored tensors over those of its base, if any."""
    state = payload[key]
    reference = payload.get("base")
    if reference is None:
        return state
    if depth > 16:
        raise CheckpointError(f"{path}: a chain of more than 16 delta checkpoints")
    if not (isinstance(reference, dict) and all(isinstance(reference.get(k), str)
                                                for k in ("path", "absolute", "sha256"))):
        raise CheckpointError(f"{path}: base is malformed (it needs the parent checkpoint's path and sha256)")
    candidates = [path.parent / reference["path"], Path(reference["absolute"])]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise CheckpointError(f"{path}: a delta checkpoint whose parent checkpoint is missing "
                              f"({reference['absolute']})")
    if (actual := file_sha256(found)) != reference["sha256"]:
        raise CheckpointError(f"{path}: its parent checkpoint {found} changed since this delta was written "
                              f"(sha256 {actual[:12]}, expected {reference['sha256'][:12]})")
    base = read_checkpoint(found, ("state_dict",))
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {key} is a {type(state).__name__}, not a dict of tensors")
    return {**_model_state(found, base, "state_dict", depth + 1), **state}


@dataclass
class LoadedModel:
    model: Transformer
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    extra: dict[str, Any]  # what the saver added (run name, policy, updates, ...)


def atomic_save(payload: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file.

    A folder that cannot be written (permissions, a full disk, `path` a folder) is a CheckpointError.
    """
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)  # gone already when the rename happened


def save_model(path: Path, model: Transformer, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
               extra: dict[str, Any] | None = None, base: DeltaBase | None = None) -> None:
    """Write `model` with its config and tokenizers to `path` atomically; with `base`, only the tensors
    that differ from it (a delta checkpoint)."""
    atomic_save({
        "format": CHECKPOINT_FORMAT,
        "model_config": dataclasses.asdict(model.config),
        **model_state_entries(path, model, base),
        "tokenizers": {"source": src_tokenizer.to_bytes(), "target": tgt_tokenizer.to_bytes()},
        "extra": extra or {},
    }, path)


def model_state_entries(path: Path, model: nn.Module, base: DeltaBase | None, key: str = "state_dict") -> dict:
    """The checkpoint entries of `model`'s weights for a file at `path`: `key` holding the full state, or
    with `base` the delta and `base` naming the parent checkpoint."""
    state = model.state_dict()
    if base is None:
        source, target = (state.get(f"{side}_embed.tokens.weight") for side in ("src", "tgt"))
        if source is not None and target is not None and source.shape == target.shape and torch.equal(source, target):
            state["tgt_embed.tokens.weight"] = source  # one joint vocabulary (a Marian parent): written once
        return {key: state}
    return {key: base.delta(state), "base": base.reference(path)}


def read_checkpoint(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """The dict that torch.save wrote to `path`, which must hold every key of `required`.

    Loaded with `weights_only=True`: a file holding other objects than tensors and plain data is
    refused, never executed. Whatever else the file is (missing, a folder, empty, cut short, not
    torch's, another dict) is a CheckpointError naming it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    try:
        with path.open("rb") as file:
            start = file.read(len(_ZIP_MAGIC))
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {err.strerror or err}") from None
    if not start:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickles: the error below says it all
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, OSError, ...
        # weights_only names the class it would have had to import; any other failure is a parse error
        if isinstance(err, pickle.UnpicklingError) and (refused := _REFUSED_GLOBAL.search(str(err))):
            raise CheckpointError(f"{path}: refused: it holds a `{refused.group(1)}` object, which no checkpoint "
                                  f"holds; loading never runs code from a file") from None
        raise CheckpointError(f"{path}: not a readable checkpoint: {_unreadable(start)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a checkpoint: it holds a {type(payload).__name__}, not a dict")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(missing)} in the checkpoint (it holds "
                              f"{_keys(payload)})")
    return payload


def _unreadable(start: bytes) -> str:
    """Why torch could not parse a file that begins with `start`."""
    return ("a torch file cut short or damaged" if start == _ZIP_MAGIC
            else "not a file that torch.save wrote")


def _keys(payload: dict) -> str:
    """The first keys of a dict, for an error message."""
    keys = [repr(key) for key in list(payload)[:6]]
    return ", ".join(keys) + (", ..." if len(payload) > 6 else "") if keys else "nothing"


def load_weights(path: Path, model: nn.Module, payload: dict, key: str) -> None:
    """`model.load_state_dict` with entry `key` of the checkpoint `payload` read from `path` (over its
    base's tensors, for a delta), after checking that it holds a tensor of the right shape for every
    parameter and buffer and nothing else."""
    weights = _model_state(path, payload, key)
    check_weights(path, model.state_dict(), weights, key)
    model.load_state_dict(weights)


def check_weights(path: Path, expected: dict[str, torch.Tensor], weights: Any, key: str) -> None:
    """A CheckpointError unless `weights` (entry `key` of the checkpoint at `path`) has exactly the names
    of `expected`, each a tensor of the same shape."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: {key} is a {type(weights).__name__}, not a dict of tensors")
    problems = []
    missing = [name for name in expected if name not in weights]
    unexpected = [str(name) for name in weights if name not in expected]
    wrong = [f"{name} {_shape(weights[name])} instead of {tuple(tensor.shape)}" for name, tensor in expected.items()
             if name in weights and _shape(weights[name]) != tuple(tensor.shape)]
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)):
        if names:
            problems.append(f"{len(names)} {kind} (first: {names[0]})")
    if problems:
        raise CheckpointError(f"{path}: {key} does not fit the model: {'; '.join(problems)}")


def _shape(value: Any) -> tuple[int, ...] | str:
    """A tensor's shape, or what the value is instead."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def load_model(path: Path, expected: ModelConfig | None = None) -> LoadedModel:
    """Rebuild the model and tokenizers saved at `path`.

    With `expected`, a checkpoint of another architecture is a CheckpointError that names each
    differing field (e.g. `d_model: expected 256, found 512`). So is a file that is no model
    checkpoint of this format, or whose config, weights or tokenizers do not fit together.
    """
    path = Path(path)
    payload = read_checkpoint(path, ())
    if payload.get("format") != CHECKPOINT_FORMAT:
        found = f"format {payload['format']!r}" if "format" in payload else f"no format (it holds {_keys(payload)})"
        raise CheckpointError(f"{path}: not an xattn-ray model checkpoint of format {CHECKPOINT_FORMAT}: {found}")
    missing = [key for key in MODEL_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(missing)} in the checkpoint")
    config = _model_config(path, payload["model_config"])
    if expected is not None and (differences := config_differences(expected, config)):
        raise CheckpointError(f"{path}: architecture differs from the experiment's: {'; '.join(differences)}")
    extra = payload.get("extra", {})
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: extra is a {type(extra).__name__}, not a dict")
    src_tokenizer = _tokenizer(path, payload["tokenizers"], "source")
    tgt_tokenizer = _tokenizer(path, payload["tokenizers"], "target")
    state = _model_state(path, payload)
    with torch.device("meta"):  # shapes only: weights that do not fit are found before memory is spent
        shapes = Transformer(config).state_dict()
    check_weights(path, shapes, state, "state_dict")
    model = Transformer(config)
    model.load_state_dict(state)
    return LoadedModel(model=model, src_tokenizer=src_tokenizer, tgt_tokenizer=tgt_tokenizer, extra=extra)


def _model_config(path: Path, raw: Any) -> ModelConfig:
    """The ModelConfig a checkpoint stores, checked field by field, and buildable."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: model_config is a {type(raw).__name__}, not a dict")
    types = typing.get_type_hints(ModelConfig)
    unknown = sorted(str(name) for name in raw if name not in types)
    if unknown:
        raise CheckpointError(f"{path}: model_config has unknown fields: {', '.join(unknown)}")
    required = [f.name for f in dataclasses.fields(ModelConfig)
                if f.default is dataclasses.MISSING and f.name not in raw]
    if required:
        raise CheckpointError(f"{path}: model_config lacks {', '.join(required)}")
    for name, value in raw.items():
        # bool is an int to Python, never a size or a probability here; the named variants are checked
        # by ModelConfig itself
        if types[name] is bool:
            if not isinstance(value, bool):
                raise CheckpointError(f"{path}: model_config: {name} must be true or false, got {value!r}")
        elif types[name] in (int, float) and (isinstance(value, bool) or not isinstance(
                value, (int,) if types[name] is int else (int, float))):
            raise CheckpointError(f"{path}: model_config: {name} must be a number, got {value!r}")
    try:
        config = ModelConfig(**raw)
        with torch.device("meta"):  # builds every layer (xlquery's alphas are checked there), allocates nothing
            Transformer(config)
    except Invalid as err:
        raise CheckpointError(f"{path}: model_config: {err.key}: {err.why}" if isinstance(err.key, str)
                              else f"{path}: model_config: {err.why}") from None
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: model_config: {str(err).splitlines()[0]}") from None
    return config


def _tokenizer(path: Path, blobs: Any, side: str) -> Tokenizer:
    """The `side` tokenizer a checkpoint stores."""
    blob = blobs.get(side) if isinstance(blobs, dict) else None
    if not (isinstance(blob, dict) and isinstance(blob.get("language"), str) and isinstance(blob.get("model"), bytes)
            and blob["model"] and isinstance(blob.get("metadata"), dict)):
        raise CheckpointError(f"{path}: tokenizers.{side} is missing or malformed (it needs a language, the "
                              f"SentencePiece model's bytes and metadata)")
    vocabulary = blob.get("vocabulary")
    if vocabulary is not None and not (isinstance(vocabulary, list) and len(vocabulary) > 4
                                       and all(isinstance(piece, str) for piece in vocabulary)):
        raise CheckpointError(f"{path}: tokenizers.{side}.vocabulary must be a list of pieces (strings)")
    try:
        return Tokenizer.from_bytes(blob)
    except RuntimeError:  # SentencePiece's parse error
        raise CheckpointError(f"{path}: tokenizers.{side}: not a SentencePiece model") from None
