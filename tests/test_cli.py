"""The `xattn-ray` command as a user runs it: a subprocess, its output, its exit status."""

import pytest

from support import EXPERIMENTS, requires_multi30k, xattn_ray


def test_validate_quickstart_generates_the_family_once_and_prints_the_runs(tmp_path):
    first = xattn_ray("validate", str(EXPERIMENTS / "quickstart.yaml"), "--storage", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "config and data OK" in first.stdout
    rows = {line.split()[0]: line.split() for line in first.stdout.splitlines()[2:]}
    assert rows["la-pv"][1:4] == ["la-pv", "scratch", "20000"]
    assert rows["lb-pv"][2:5] == ["la-pv", "(new", "src"]
    assert rows["la-lc"][2:5] == ["la-pv", "(new", "tgt"]
    families = list((tmp_path / "cache" / "data").iterdir())
    assert len(families) == 1 and (families[0] / "train.lc").is_file()
    second = xattn_ray("validate", str(EXPERIMENTS / "quickstart.yaml"), "--storage", str(tmp_path))
    assert second.returncode == 0 and "generating" not in second.stderr


@requires_multi30k
def test_validate_multi30k(tmp_path):
    result = xattn_ray("validate", str(EXPERIMENTS / "multi30k.yaml"), "--storage", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "fr-cs" in result.stdout and "flickr2016 1000" in result.stdout


@pytest.mark.parametrize("mistake, expected", [
    ("children:\n  - {pair: de-en, parent: fr-en, polcy: x}\n", "exp.yaml:11: children[0].polcy: unknown key"),
    ("children:\n  - {pair: de-en, parent: nobody}\n", "exp.yaml:11: children[0].parent: no parent named 'nobody'"),
])
def test_validate_config_mistake_is_one_line_and_exit_2(tmp_path, mistake, expected):
    (tmp_path / "exp.yaml").write_text(
        "name: x\ncorpora:\n  c:\n    synthetic: {languages: 1, sentences: 50}\n"
        "parents:\n  - {name: fr-en, pair: la-pv, corpus: c}\n" + "\n" * 3 + mistake)
    result = xattn_ray("validate", "exp.yaml", "--storage", str(tmp_path / "store"), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("xattn-ray: error: ") and expected in line
    assert not (tmp_path / "store").exists()  # nothing written for a bad config


def test_validate_data_mistake_names_the_file(tmp_path):
    for lang, text in (("fr", "a\nb\n"), ("en", "A\n")):
        (tmp_path / f"train.{lang}").write_text(text)
        (tmp_path / f"valid.{lang}").write_text("v\n")
        (tmp_path / f"test.{lang}").write_text("t\n")
    (tmp_path / "exp.yaml").write_text(
        "name: x\ncorpora:\n  c:\n    languages: [fr, en]\n    train: train.{lang}\n    valid: valid.{lang}\n"
        "    test:\n      t: test.{lang}\nparents:\n  - {name: p, pair: fr-en, corpus: c}\n")
    result = xattn_ray("validate", str(tmp_path / "exp.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"xattn-ray: error: {tmp_path / 'train.fr'} has 2 lines but "
                                     f"{tmp_path / 'train.en'} has 1: the sides of a parallel corpus "
                                     f"must have equal line counts")


def test_data_synth_writes_a_family(tmp_path):
    result = xattn_ray("data", "synth", "--out", str(tmp_path / "fam"), "--languages", "2",
                       "--sentences", "300", "--seed", "7", "--valid", "20", "--test", "30")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "fam" / "train.lb").read_text().splitlines()) == 300
    assert len((tmp_path / "fam" / "test.pv").read_text().splitlines()) == 30
    assert (tmp_path / "fam" / "dictionaries" / "la-lb.txt").is_file()
    again = xattn_ray("data", "synth", "--out", str(tmp_path / "fam"))
    assert again.returncode == 2 and str(tmp_path / "fam") in again.stderr


def test_python_dash_m_and_help():
    result = xattn_ray("--help")
    assert result.returncode == 0 and "validate" in result.stdout and "data" in result.stdout


def test_policies_command_counts_the_papers_groups():
    result = xattn_ray("policies", "--preset", "base", "--src-vocab", "8000", "--tgt-vocab", "8000", "--json")
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert report["groups"]["xattn"] == 6_309_888
    by_policy = {row["policy"]: row for row in report["policies"]}
    assert by_policy["xattn"]["trainable"] == report["groups"]["xattn"] + report["groups"]["src"]
    assert by_policy["scratch"]["trainable"] == by_policy["scratch"]["total"]
    table = xattn_ray("policies", "--preset", "small", "--side", "target")
    assert "xattn      trainable params:" in table.stdout and "new target" in table.stdout
    assert xattn_ray("policies", "--preset", "huge").returncode == 2


def test_version_help_and_exit_codes():
    import xattn_ray as package
    from xattn_ray.cli import EXIT_CODES
    from xattn_ray.runner.stages import EXIT_INTERRUPTED

    version = xattn_ray("--version")
    assert version.returncode == 0 and version.stdout.startswith(f"xattn-ray {package.__version__}")
    help_text = xattn_ray("--help")
    assert help_text.returncode == 0 and "freeze policies" in help_text.stdout
    assert "exit status:" in help_text.stdout and all(f"  {code} " in help_text.stdout for code in (0, 1, 2, 130))
    assert EXIT_INTERRUPTED in EXIT_CODES


def test_notebooks_import_the_store_and_the_loader_from_the_package():
    import subprocess
    import sys

    from support import PROJECT

    code = ("import sys, xattn_ray\n"
            "assert 'torch' not in sys.modules and 'xattn_ray.store' not in sys.modules\n"  # lazy: a fast import
            "from xattn_ray import ResultsStore, load_experiment\n"
            f"experiment = load_experiment({str(EXPERIMENTS / 'quickstart.yaml')!r})\n"
            "print(experiment.name, ResultsStore.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["quickstart", "ResultsStore"]
