"""A child's fresh parameters come from a stream of their own, not the one its parent started from."""

import torch

from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.policies import POLICIES
from xattn_ray.engine.transfer import make_child
from xattn_ray.study.spec import RunSpec
from xattn_ray.study.transfer import child_init_seed

CONFIG = preset_config("tiny", 20, 20, dropout=0.0, attention_dropout=0.0)


def child(parent: Transformer, policy: str, seed: int) -> Transformer:
    torch.manual_seed(child_init_seed(RunSpec("child", "de-en", seed, policy)))
    return make_child(parent, "source", CONFIG.src_vocab_size, POLICIES[policy], policy).model


def test_new_embeddings_do_not_start_at_the_parents_initial_ones():
    torch.manual_seed(1)  # how a parent of seed 1 is built
    parent = Transformer(CONFIG)
    initial = {name: value.clone() for name, value in parent.state_dict().items()}
    with torch.no_grad():  # training moves the parent away from its initial values
        for value in parent.parameters():
            value.add_(0.01)

    fresh = child(parent, "xattn", seed=1).state_dict()
    assert not torch.allclose(fresh["src_embed.tokens.weight"], initial["src_embed.tokens.weight"])
    randomised = child(parent, "randxattn", seed=1).state_dict()
    cross = [name for name in randomised if ".cross_attn." in name and name.endswith("weight")]
    assert cross and all(not torch.allclose(randomised[name], initial[name]) for name in cross)


def test_the_policies_of_one_seed_share_their_fresh_embeddings_and_seeds_differ():
    torch.manual_seed(1)
    parent = Transformer(CONFIG)
    body, xattn = (child(parent, policy, seed=2).state_dict()["src_embed.tokens.weight"] for policy in ("body", "xattn"))
    assert torch.equal(body, xattn)  # paired: the policies differ only in what trains
    other = child(parent, "xattn", seed=3).state_dict()["src_embed.tokens.weight"]
    assert not torch.allclose(xattn, other)
