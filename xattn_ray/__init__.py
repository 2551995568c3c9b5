"""xattn-ray: which parts of a pretrained translation Transformer must be fine-tuned for a new language.

A distributed ablation runner for cross-attention transfer (Gheini et al., 2021) and structured
cross-lingual attention (Foroutan et al., 2023). Everything outside `xattn_ray.runner` and
`xattn_ray.cli` is plain Python and PyTorch, with no Ray import.

For notebooks, the two entrances are importable from here::

    from xattn_ray import ResultsStore, load_experiment
    rows = ResultsStore("xattn-runs/results").read(experiment="quickstart")

They load on first use, so `import xattn_ray` (and the command's `--help`) stays fast.
"""

__version__ = "0.1.0"
__all__ = ["ResultsStore", "load_experiment", "__version__"]


def __getattr__(name: str):
    if name == "ResultsStore":
        from xattn_ray.store import ResultsStore

        return ResultsStore
    if name == "load_experiment":
        from xattn_ray.study.config import load_experiment

        return load_experiment
    raise AttributeError(f"module 'xattn_ray' has no attribute {name!r}")
