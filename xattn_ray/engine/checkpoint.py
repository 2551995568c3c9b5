"""Model checkpoints that carry their architecture and both tokenizers.

A checkpoint is one file holding the model config, the weights, and the serialized SentencePiece
models of both sides (a few hundred KB), so a checkpoint copied alone to another machine of a cluster
rebuilds its model and tokenizers. Only plain types are stored, so loading uses
`torch.load(weights_only=True)`, which executes no code from the file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xattn_ray.engine.model import ModelConfig, Transformer, config_differences
from xattn_ray.engine.tokenizer import Tokenizer
from xattn_ray.errors import XattnError

CHECKPOINT_FORMAT = 1


class CheckpointError(XattnError):
    """A checkpoint that is missing, unreadable, or built for another architecture."""


@dataclass
class LoadedModel:
    model: Transformer
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    extra: dict[str, Any]  # what the saver added (run name, policy, updates, ...)


def atomic_save(payload: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_model(path: Path, model: Transformer, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
               extra: dict[str, Any] | None = None) -> None:
    """Write `model` with its config and tokenizers to `path` atomically."""
    atomic_save({
        "format": CHECKPOINT_FORMAT,
        "model_config": dataclasses.asdict(model.config),
        "state_dict": model.state_dict(),
        "tokenizers": {"source": src_tokenizer.to_bytes(), "target": tgt_tokenizer.to_bytes()},
        "extra": extra or {},
    }, path)


def load_model(path: Path, expected: ModelConfig | None = None) -> LoadedModel:
    """Rebuild the model and tokenizers saved at `path`.

    With `expected`, a checkpoint of another architecture is a CheckpointError that names each
    differing field (e.g. `d_model: expected 256, found 512`).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as err:  # a truncated or foreign file: say so in one line
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an xattn-ray checkpoint of format {CHECKPOINT_FORMAT}")
    config = ModelConfig(**payload["model_config"])
    if expected is not None and (differences := config_differences(expected, config)):
        raise CheckpointError(f"{path}: architecture differs from the experiment's: {'; '.join(differences)}")
    model = Transformer(config)
    model.load_state_dict(payload["state_dict"])
    return LoadedModel(model=model,
                       src_tokenizer=Tokenizer.from_bytes(payload["tokenizers"]["source"]),
                       tgt_tokenizer=Tokenizer.from_bytes(payload["tokenizers"]["target"]),
                       extra=payload["extra"])
