"""Parent to child: detect the side that changes, build the child, copy what transfers, freeze the rest.

Gheini et al. (2021) move a Fr-En parent to De-En (new source) or Fr-De (new target). The child gets a
new embedding group for the new side, freshly initialised for the new language's vocabulary; every
other parameter is copied from the parent, except groups the policy re-initialises (`randxattn`).
Then the policy decides what trains. A policy's `embed_init` may start the new token embeddings from
the parent instead (`shared`: the parent's row for each piece the two vocabularies share; `mean`: the
parent's mean row); the rest of the new group (positions, embedding norm) is then the parent's too.

After training, `graft_embeddings` moves an embedding group the other way, from one trained model into
another: plugging the parent's embeddings back into a child measures forgetting, and joining one
child's body with another child's new embeddings makes a zero-shot pair (docs/paper.md, "Forgetting" and
"Stitching and zero-shot").

`to_xlquery` gives a trained standard model the cross-lingual query of Foroutan et al. (2023): the same
weights plus Q_cross := Q in every encoder layer, so the variant starts exactly where the model was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from xattn_ray.engine.checkpoint import LoadedModel
from xattn_ray.engine.model import Transformer
from xattn_ray.engine.policies import NEW_EMBED, Policy, Side, embedding_group, freeze, select, trainable_names
from xattn_ray.engine.structured_dropout import MaskAlphas
from xattn_ray.engine.tokenizer import PAD_ID
from xattn_ray.errors import XattnError


class TransferError(XattnError, ValueError):  # still a ValueError, as callers caught it before
    """A model that cannot be made from the given ones: a child whose both sides changed (or neither),
    or an embedding group grafted onto a body of another shape."""



@dataclass(frozen=True)
class Child:
    """A child model ready to train, and where each of its parameters came from."""

    model: Transformer
    side: Side
    trainable: frozenset[str]
    copied: frozenset[str]  # parameters holding the parent's values


def make_child(parent: Transformer, side: Side, vocab_size: int, policy: Policy, policy_name: str,
               pieces: tuple[list[str], list[str]] | None = None) -> Child:
    """Build the child of `parent` whose `side` gets a new vocabulary of `vocab_size` pieces.

    A `random` policy (the scratch baseline) keeps the parent's architecture but none of its weights.
    `pieces` (the parent's and the child's vocabularies of that side, by id) is needed by a policy
    whose `embed_init` is `shared`.
    """
    vocab_field = "src_vocab_size" if side == "source" else "tgt_vocab_size"
    child = Transformer(dataclasses.replace(parent.config, **{vocab_field: vocab_size}))
    names = [name for name, _ in child.named_parameters()]
    copied: set[str] = set()
    if policy.init == "parent":
        fresh = select(names, [NEW_EMBED, *policy.reinit], side, policy_name)
        parent_state = parent.state_dict()
        if policy.embed_init != "random":
            fresh -= _start_from_parent(child, parent, side, policy.embed_init, pieces)
        child.load_state_dict({name: parent_state[name] for name in names if name not in fresh}, strict=False)
        copied = set(names) - fresh
    trainable = trainable_names(child, policy, side, policy_name)
    freeze(child, trainable)
    return Child(model=child, side=side, trainable=frozenset(trainable), copied=frozenset(copied))


def _start_from_parent(child: Transformer, parent: Transformer, side: Side, how: str,
                       pieces: tuple[list[str], list[str]] | None) -> set[str]:
    """Set the child's new token embeddings [V', D] (and logits bias [V']) from the parent's [V, D]; return
    the names of the new group's other parameters, which are then copied from the parent as they are.

    `shared`: row i of the child is the parent's row of the same piece, where the parent has it (the
    rest keep their fresh random values); `mean`: every row is the parent's mean row. PAD stays zero.
    """
    group = "src_embed" if side == "source" else "tgt_embed"
    new, old = getattr(child, group), getattr(parent, group)
    with torch.no_grad():
        if how == "mean":
            new.tokens.weight.copy_(old.tokens.weight.mean(dim=0).expand_as(new.tokens.weight))
            if new.logits_bias is not None:
                new.logits_bias.fill_(float(old.logits_bias.mean()))
        else:
            if pieces is None:
                raise TransferError("embed_init `shared` needs both vocabularies' pieces")
            parent_ids = {piece: index for index, piece in enumerate(pieces[0])}
            pairs = [(index, parent_ids[piece]) for index, piece in enumerate(pieces[1]) if piece in parent_ids]
            if pairs:
                rows, sources = (torch.tensor(column) for column in zip(*pairs))
                new.tokens.weight[rows] = old.tokens.weight[sources]
                if new.logits_bias is not None:
                    new.logits_bias[rows] = old.logits_bias[sources]
        new.tokens.weight[PAD_ID].zero_()
    return {f"{group}.{name}" for name, _ in new.named_parameters() if name not in ("tokens.weight", "logits_bias")}


# What an embedding group shares with the body it joins. The vocabulary size of the grafted side
# follows the donor; dropout rates are the base model's.
GRAFT_FIELDS = ("d_model", "max_positions", "heads", "encoder_layers", "decoder_layers", "ffn_dim")


def graft_embeddings(base: LoadedModel, donor: LoadedModel, side: Side) -> LoadedModel:
    """A new model equal to `base` except for the `side` embedding group and tokenizer, which are `donor`'s.

    The group is the side's token embeddings [V, D], position embeddings [max_positions, D] and
    embedding layer norm [D]; on the target side the token embeddings are also the output projection
    (tied), so the donor's output layer comes with them. `base` and `donor` are left untouched.

    One operation serves both analyses of the paper:
      forgetting   graft_embeddings(child, parent, child's new side), scored on the parent's test set;
      zero-shot    graft_embeddings(Fr-Cs child, De-En child, "source") is a De-Cs model: the body of
                   one child with the new embeddings of another.

    Raises TransferError naming each field in GRAFT_FIELDS where the two architectures differ.
    """
    if side not in ("source", "target"):
        raise ValueError(f"side must be 'source' or 'target', got {side!r}")
    base_config, donor_config = base.model.config, donor.model.config
    differences = [f"{name} (base {getattr(base_config, name)}, donor {getattr(donor_config, name)})"
                   for name in GRAFT_FIELDS if getattr(base_config, name) != getattr(donor_config, name)]
    if differences:
        raise TransferError(f"cannot graft the donor's {side} embeddings onto the base model: "
                            f"{'; '.join(differences)} differ")
    vocab_field = "src_vocab_size" if side == "source" else "tgt_vocab_size"
    grafted = Transformer(dataclasses.replace(base_config, **{vocab_field: getattr(donor_config, vocab_field)}))
    names = list(grafted.state_dict())
    group = select(names, [embedding_group(side)], None, "graft")
    base_state, donor_state = base.model.state_dict(), donor.model.state_dict()
    grafted.load_state_dict({name: (donor_state if name in group else base_state)[name] for name in names})
    reference = next(base.model.parameters())  # the graft lives where the base model lives
    grafted.to(device=reference.device, dtype=reference.dtype).train(base.model.training)
    if side == "source":
        return LoadedModel(grafted, donor.src_tokenizer, base.tgt_tokenizer, extra={})
    return LoadedModel(grafted, base.src_tokenizer, donor.tgt_tokenizer, extra={})


def to_xlquery(model: Transformer, training: MaskAlphas | None = None,
               evaluation: MaskAlphas | None = None) -> Transformer:
    """A new xlquery model holding `model`'s weights, with every encoder layer's Q_cross a copy of its Q.

    `training` / `evaluation` set the structured masks' alphas (default: those of `model`'s config,
    the authors' values unless changed). `model` (standard attention) is left untouched; the new model
    lives on its device and dtype, in its training mode, with every parameter trainable (a policy
    freezes afterwards). On input without a second segment it computes exactly what `model` does.
    """
    if model.config.attention != "standard":
        raise TransferError(f"to_xlquery converts a standard model; this one has {model.config.attention!r} "
                            f"attention")
    training, evaluation = training or model.config.training_alphas, evaluation or model.config.evaluation_alphas
    converted = Transformer(dataclasses.replace(
        model.config, attention="xlquery", mono_alpha=training.mono, cross_alpha=training.cross,
        eval_mono_alpha=evaluation.mono, eval_cross_alpha=evaluation.cross))
    missing, unexpected = converted.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".q_cross_proj." in name for name in missing), (missing, unexpected)
    for layer in converted.encoder.layers:
        layer.self_attn.init_cross_from_query()
    reference = next(model.parameters())
    return converted.to(device=reference.device, dtype=reference.dtype).train(model.training)
