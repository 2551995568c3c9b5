"""Parent to child: detect the side that changes, build the child, copy what transfers, freeze the rest.

Gheini et al. (2021) move a Fr-En parent to De-En (new source) or Fr-De (new target). The child gets a
new embedding group for the new side, freshly initialised for the new language's vocabulary; every
other parameter is copied from the parent, except groups the policy re-initialises (`randxattn`).
Then the policy decides what trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xattn_ray.config import LanguagePair
from xattn_ray.model import Transformer
from xattn_ray.policies import NEW_EMBED, Policy, Side, freeze, select, trainable_names


class TransferError(ValueError):
    """A child that cannot be made from its parent (both sides changed, or neither)."""


def changed_side(parent: LanguagePair, child: LanguagePair) -> Side:
    """`source` for Fr-En -> De-En, `target` for Fr-En -> Fr-De."""
    if child.src != parent.src and child.tgt == parent.tgt:
        return "source"
    if child.tgt != parent.tgt and child.src == parent.src:
        return "target"
    what = "both sides change" if child.src != parent.src else "no side changes"
    raise TransferError(f"child {child} of parent {parent}: {what}; transfer replaces exactly one "
                        f"side (use the `scratch` policy to train such a pair from scratch)")


@dataclass(frozen=True)
class Child:
    """A child model ready to train, and where each of its parameters came from."""

    model: Transformer
    side: Side
    trainable: frozenset[str]
    copied: frozenset[str]  # parameters holding the parent's values


def make_child(parent: Transformer, side: Side, vocab_size: int, policy: Policy, policy_name: str) -> Child:
    """Build the child of `parent` whose `side` gets a new vocabulary of `vocab_size` pieces.

    A `random` policy (the scratch baseline) keeps the parent's architecture but none of its weights.
    """
    vocab_field = "src_vocab_size" if side == "source" else "tgt_vocab_size"
    child = Transformer(dataclasses.replace(parent.config, **{vocab_field: vocab_size}))
    names = [name for name, _ in child.named_parameters()]
    copied: set[str] = set()
    if policy.init == "parent":
        fresh = select(names, [NEW_EMBED, *policy.reinit], side, policy_name)
        parent_state = parent.state_dict()
        child.load_state_dict({name: parent_state[name] for name in names if name not in fresh}, strict=False)
        copied = set(names) - fresh
    trainable = trainable_names(child, policy, side, policy_name)
    freeze(child, trainable)
    return Child(model=child, side=side, trainable=frozenset(trainable), copied=frozenset(copied))
