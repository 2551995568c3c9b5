"""Freeze policies: which parameter groups of a child model train, declared in one table.

A policy says how the child starts (`parent` weights or `random`), which groups train, and which are
re-initialised before training. Groups are named sets of parameter-name patterns (`fnmatch` globs
over `Transformer.named_parameters()`); `new_embed` is the embedding group of the side the child
replaces. One rule decides every policy:

    trainable = union of the `train` groups' parameters
                minus the unchanged side's embedding group (it always stays frozen under transfer)

Every pattern must match at least one parameter, so a typo is an error rather than a silently
frozen model. Users add policies in the experiment file with the same fields.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from xattn_ray.errors import XattnError
from xattn_ray.schema import Invalid

Side = Literal["source", "target"]

# Parameter groups, by the names model.py keeps stable (docs/paper.md, "Parameter groups").
GROUPS: dict[str, tuple[str, ...]] = {
    "src": ("src_embed.*",),  # source tokens, positions, embedding layer norm
    "tgt": ("tgt_embed.*",),  # target tokens (= the tied output projection), positions, layer norm
    "xattn": ("decoder.layers.*.cross_attn.*", "decoder.layers.*.cross_attn_norm.*"),
    "xlquery": ("encoder.layers.*.self_attn.q_cross_proj.*",),  # the cross-lingual queries (xlquery models)
    "body": ("encoder.*", "decoder.*"),  # everything but `src` and `tgt`
    "bias": ("*.bias",),
}
NEW_EMBED = "new_embed"  # stands for `src` or `tgt`, whichever side the child replaces
EMBED_INITS = ("random", "shared", "mean")


def embedding_group(side: Side) -> str:
    return "src" if side == "source" else "tgt"


@dataclass(frozen=True)
class Policy:
    """How a child is initialised and which of its parameters train."""

    init: Literal["parent", "random"] = "parent"  # `random`: no transfer (the scratch baseline)
    train: list[str] = field(default_factory=list)  # group names or parameter-name patterns
    reinit: list[str] = field(default_factory=list)  # groups given fresh weights before training
    # How the new side's token embeddings start (transfer.py): `random` (the paper), `shared` (the
    # parent's row for every piece both vocabularies have, OpenNMT-py's update_vocab idea), `mean`
    # (every row the parent's mean row).
    embed_init: Literal["random", "shared", "mean"] = "random"

    def __post_init__(self) -> None:
        if not self.train:
            raise Invalid("train", "a policy must train at least one group")
        if self.init == "random" and self.reinit:
            raise Invalid("reinit", "a `random` policy re-initialises everything already")
        if self.embed_init not in EMBED_INITS:
            raise Invalid("embed_init", f"must be one of {', '.join(EMBED_INITS)}, got {self.embed_init!r}")
        if self.init == "random" and self.embed_init != "random":
            raise Invalid("embed_init", "a `random` policy starts from nothing of the parent's")

    def identity(self) -> dict:
        """The fields a run's hash includes: `embed_init` only when not `random`, the default it had
        before it was an option, so runs from before keep their hashes."""
        fields = dataclasses.asdict(self)
        if fields["embed_init"] == "random":
            del fields["embed_init"]
        return fields


POLICIES: dict[str, Policy] = {
    "scratch": Policy(init="random", train=["*"]),
    "body": Policy(train=[NEW_EMBED, "body"]),
    "xattn": Policy(train=[NEW_EMBED, "xattn"]),
    "randxattn": Policy(train=[NEW_EMBED, "xattn"], reinit=["xattn"]),
    "embed": Policy(train=[NEW_EMBED]),
    "bitfit": Policy(train=[NEW_EMBED, "bias"]),
}


class PolicyError(XattnError, ValueError):  # a user's mistake: one line at the CLI, not a traceback
    """A policy that cannot apply to a model: a pattern that matches no parameter."""


def patterns_of(entry: str, side: Side | None) -> tuple[str, ...]:
    """The parameter-name patterns a `train`/`reinit` entry stands for."""
    if entry == NEW_EMBED:
        if side is None:
            raise PolicyError(f"{NEW_EMBED!r} needs a child with a new source or target side")
        return GROUPS[embedding_group(side)]
    return GROUPS.get(entry, (entry,))


def select(names: list[str], entries: list[str], side: Side | None, policy_name: str) -> set[str]:
    """Names matched by any entry's patterns; a pattern that matches nothing raises PolicyError."""
    chosen: set[str] = set()
    for entry in entries:
        for pattern in patterns_of(entry, side):
            matched = fnmatch.filter(names, pattern)
            if not matched:
                raise PolicyError(f"policy {policy_name!r}: pattern {pattern!r} (from {entry!r}) "
                                  f"matches no parameter")
            chosen.update(matched)
    return chosen


def trainable_names(model: nn.Module, policy: Policy, side: Side | None, policy_name: str) -> set[str]:
    """The parameters `policy` trains on a child whose `side` changed (None: a scratch run)."""
    names = [name for name, _ in model.named_parameters()]
    trainable = select(names, policy.train, side, policy_name)
    if policy.init == "parent" and side is not None:
        unchanged = "target" if side == "source" else "source"
        trainable -= select(names, [embedding_group(unchanged)], None, policy_name)
    return trainable


def freeze(model: nn.Module, trainable: set[str]) -> None:
    """Set `requires_grad` so exactly the `trainable` parameters receive gradients."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    def summary(self) -> str:
        """PEFT's one-line summary."""
        share = 100.0 * self.trainable / self.total if self.total else 0.0
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {share:.4f}"


def count_parameters(model: nn.Module) -> ParameterCount:
    parameters = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in parameters if p.requires_grad),
                          sum(p.numel() for p in parameters))


def group_sizes(model: nn.Module) -> dict[str, int]:
    """Parameters in each named group (`body` overlaps `xattn`, `xlquery` and `bias`); 0 for a group the
    model lacks (`xlquery` in a standard model)."""
    named = dict(model.named_parameters())
    return {group: sum(parameter.numel() for name, parameter in named.items()
                       if any(fnmatch.fnmatch(name, pattern) for pattern in GROUPS[group]))
            for group in GROUPS}
