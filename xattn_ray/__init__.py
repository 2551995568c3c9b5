"""xattn-ray: which parts of a pretrained translation Transformer must be fine-tuned for a new language.

A distributed ablation runner for cross-attention transfer (Gheini et al., 2021) and structured
cross-lingual attention (Foroutan et al., 2023). Everything outside `xattn_ray.runner` and
`xattn_ray.cli` is plain Python and PyTorch, with no Ray import.
"""

__version__ = "0.1.0"
