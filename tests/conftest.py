"""Shared fixtures: real toy tokenizers, sacreBLEU's cache and the tiny studies the tests write (paths and the
CLI: support.py)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# sacreBLEU reads SACREBLEU once, when it is first imported (before any test module imports the project):
# the tests, and the commands they run, get an empty cache of their own instead of the user's ~/.sacrebleu,
# so no test downloads a test set or passes because one happens to be there.
_SACREBLEU_CACHE = Path(tempfile.mkdtemp(prefix="xattn-tests-sacrebleu-"))
os.environ["SACREBLEU"] = str(_SACREBLEU_CACHE)
atexit.register(shutil.rmtree, _SACREBLEU_CACHE, True)


@pytest.fixture
def sacrebleu_cache():
    """sacreBLEU's cache folder (empty), emptied again after the test."""
    import sacrebleu.utils

    assert Path(sacrebleu.utils.SACREBLEU_DIR) == _SACREBLEU_CACHE, "sacreBLEU was imported before conftest.py"
    yield _SACREBLEU_CACHE
    for entry in _SACREBLEU_CACHE.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


@pytest.fixture(scope="session")
def toy_tokenizers(tmp_path_factory):
    """Real SentencePiece models (source `aa`, target `bb`) trained on a few hundred toy lines."""
    from xattn_ray.engine.tokenizer import TokenizerOptions, train_tokenizer

    cache = tmp_path_factory.mktemp("spm")
    lines = [f"word{i % 37} thing{i % 11} more{i % 5}" for i in range(400)]
    return (train_tokenizer("aa", lines, TokenizerOptions(vocab_size=60), cache),
            train_tokenizer("bb", [line.upper() for line in lines], TokenizerOptions(vocab_size=60), cache))


# -- the tiny studies the tests write --------------------------------------------------------------
#
# Two templates: a transfer study (one parent la-pv and its children) and a code-switching study (a base
# model, then the grid). A variant fills every placeholder of its template; a test overrides a few by
# keyword: `tiny_study(tmp_path, "analyses", grid="grid: {policies: [scratch, xattn], seeds: [1]}")`.
# Placeholders left empty drop their line, so an optional section (`grid`, `extra`, `pretrain`) is
# either a whole YAML line (or lines) or "".

TRANSFER_STUDY = """\
name: {name}
corpora:
  synth:
    synthetic: {{languages: {languages}, sentences: 400, seed: 3, valid: 30, test: 20}}
tokenizer: {{vocab_size: 120}}
model: {{preset: tiny{model}}}
train: {{lr: 0.003, warmup_updates: 5, max_tokens: {max_tokens}, max_updates: {updates}, validate_every: {every}, patience: 0}}
evaluation: {{beam: 2, max_tokens: 2000}}
parents:
  - {{name: la-pv, pair: la-pv, corpus: synth, lines: [0, 250]}}
children:
{children}
{grid}
{extra}
"""

CODESWITCH_STUDY = """\
name: {name}
corpora:
  synth:
    synthetic: {synthetic}
tokenizer: {{vocab_size: auto}}
model: {{preset: tiny}}
train: {train}
child_train: {child_train}
evaluation: {{beam: 1}}
codeswitch:
  corpus: synth
  sources: [la, lb, lc]
  pivot: pv
  train_pairs: [[la, lb]]
  test_pairs: [[lb, lc], [lc, la]]
  base_lines: {base_lines}
  lines: {lines}
  test_lines: {test_lines}
{pretrain}
grid:
  policies: {policies}
  attention: [standard, xlquery]
  alphas: {alphas}
  seeds: {seeds}
"""

TWO_CHILDREN = "  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}\n  - {pair: la-lb, parent: la-pv, lines: [250, 400]}"
ANALYSES = ("analyses:\n  forgetting: true\n  lexicon: {children: [lb-pv]}\n"
            "  zeroshot:\n    - {body: la-lc, embeddings: lb-pv}")
CODESWITCH_PRETRAIN = ("  pretrain: {lr: 0.002, warmup_updates: 2, max_tokens: 1024, max_updates: 6, validate_every: 3, "
                       "patience: 0}")

TINY = dict(name="tiny", languages=2, model="", max_tokens=600, updates=12, every=6, children=TWO_CHILDREN,
            grid="", extra="")
CODESWITCH = dict(
    name="cs", synthetic="{languages: 3, sentences: 1200, seed: 2, valid: 60, test: 30}",
    train="{lr: 0.003, warmup_updates: 10, max_tokens: 1024, max_updates: 16, validate_every: 8, patience: 0}",
    child_train="{lr: 0.002, warmup_updates: 4, max_tokens: 1024, max_updates: 8, validate_every: 4, patience: 0}",
    base_lines="[0, 800]", lines="[800, 1200]", test_lines=20, pretrain=CODESWITCH_PRETRAIN,
    policies="[body, bitfit]", alphas="[[0.3, 0.3]]", seeds="[1]")

STUDIES: dict[str, tuple[str, dict]] = {
    # 400 sentences of 2 synthetic languages; children lb-pv (new source) and la-lb (new target);
    # 12 updates a run: seconds each. No grid (one policy); the tests add theirs.
    "tiny": (TRANSFER_STUDY, TINY),
    # a third language, children lb-pv and la-lc, and the three analyses (forgetting, lexicon, zero-shot).
    "analyses": (TRANSFER_STUDY, {
        **TINY, "name": "ana", "languages": 3,
        "children": "  - {pair: lb-pv, parent: la-pv, lines: [250, 400]}\n"
                    "  - {pair: la-lc, parent: la-pv, lines: [250, 400]}",
        "grid": "grid: {policies: [scratch, embed, xattn], seeds: [1]}", "extra": ANALYSES}),
    # code-switching on 1200 sentences of 3 languages: base, Q_cross pretraining, body/bitfit x
    # standard/xlquery, one alphas pair, one seed.
    "codeswitch": (CODESWITCH_STUDY, CODESWITCH),
    # the report's code-switching study: more data and updates (3000 sentences), no pretraining, 2 seeds.
    "codeswitch-report": (CODESWITCH_STUDY, {
        **CODESWITCH, "name": "cstiny", "synthetic": "{languages: 3, sentences: 3000, seed: 1, valid: 100, test: 60}",
        "train": "{lr: 0.003, warmup_updates: 20, max_tokens: 1024, max_updates: 40, validate_every: 20, patience: 0}",
        "child_train": "{lr: 0.001, warmup_updates: 10, max_tokens: 1024, max_updates: 20, validate_every: 10, "
                       "patience: 0}",
        "base_lines": "[0, 2000]", "lines": "[2000, 3000]", "test_lines": 40, "pretrain": "", "seeds": "[1, 2]"}),
}


def study_text(variant: str = "tiny", **overrides) -> str:
    """The YAML of one of STUDIES, with some placeholders overridden (an unknown one is an error)."""
    template, defaults = STUDIES[variant]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"study {variant!r} has no placeholder {', '.join(unknown)} (it has {', '.join(defaults)})")
    text = template.format(**{**defaults, **overrides})
    return "".join(line + "\n" for line in text.splitlines() if line.strip())


def write_study(folder: Path, variant: str = "tiny", **overrides) -> Path:
    """Writes `<name>.yaml` into `folder` and returns its path."""
    values = {**STUDIES[variant][1], **overrides}
    path = folder / f"{values['name']}.yaml"
    path.write_text(study_text(variant, **overrides))
    return path


@pytest.fixture(scope="session")
def tiny_study():
    """`tiny_study(folder, variant="tiny", **overrides) -> Path`: writes a study of STUDIES into `folder`.

    Session-scoped, so module-scoped fixtures (a study trained once for a module) can use it too:
    they pass `tmp_path_factory.mktemp(...)`, tests their `tmp_path`.
    """
    return write_study
