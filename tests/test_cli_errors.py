"""What a user types that no command can use: exit status 2, one line on stderr naming the option, file or
line at fault, and nothing written. Each case runs the real command in a subprocess."""

from pathlib import Path

import pytest
import torch

from support import PROJECT, xattn_ray


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, toy_tokenizers) -> Path:
    """A folder with a real tiny checkpoint `good.pt` and damaged copies of it."""
    from xattn_ray.engine.checkpoint import save_model
    from xattn_ray.engine.model import Transformer, preset_config

    folder = tmp_path_factory.mktemp("checkpoints")
    src, tgt = toy_tokenizers
    save_model(folder / "good.pt", Transformer(preset_config("tiny", src.vocab_size, tgt.vocab_size)), src, tgt)
    data = (folder / "good.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": 1, "model_config": Path("x")}, folder / "foreign.pt")
    payload = torch.load(folder / "good.pt", weights_only=True)
    torch.save(dict(payload, model_config=dict(payload["model_config"], d_model=64, ffn_dim=128)), folder / "wide.pt")
    return folder


def one_line_error(done, *parts: str) -> None:
    """Exit 2, nothing on stdout, and one stderr line `xattn-ray: error: ...` holding every part."""
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xattn-ray: error: "), done.stderr
    for part in parts:
        assert part in lines[0]


@pytest.mark.parametrize("options, expected", [
    (["--beam", "0"], "--beam 0: must be at least 1"),
    (["--beam", "-2"], "--beam -2: must be at least 1"),
    (["--max-tokens", "0"], "--max-tokens 0: must be at least 1"),
    (["--length-penalty", "nan"], "--length-penalty nan: must be a finite number"),
    (["--length-penalty", "inf"], "--length-penalty inf: must be a finite number"),
])
def test_translate_options(checkpoints, options, expected):
    one_line_error(xattn_ray("translate", "--checkpoint", checkpoints / "good.pt", *options, input="word1\n"),
                   expected)


def test_translate_invalid_utf8_names_the_line_and_translates_nothing(checkpoints):
    done = xattn_ray("translate", "--checkpoint", checkpoints / "good.pt", "--beam", "1",
                     input=b"word1 thing2\nword3\nmore\xff\xfe word4\nword5\n")
    one_line_error(done, "standard input, line 3: not UTF-8 text (byte 0xff)")


@pytest.mark.parametrize("name, expected", [
    ("truncated.pt", "not a readable checkpoint: a torch file cut short or damaged"),
    ("foreign.pt", "refused: it holds a `pathlib.PosixPath` object"),
    ("wide.pt", "state_dict does not fit the model"),
])
def test_translate_with_a_bad_checkpoint(checkpoints, name, expected):
    done = xattn_ray("translate", "--checkpoint", checkpoints / name, input="word1\n")
    one_line_error(done, f"{checkpoints / name}: {expected}")
    assert "weights_only" not in done.stderr


def test_stitch_mistakes_write_nothing(checkpoints, tmp_path):
    good, before = checkpoints / "good.pt", (checkpoints / "good.pt").read_bytes()
    stitch = ("stitch", "--body", good, "--embeddings", good, "--side", "source", "--out")
    one_line_error(xattn_ray(*stitch, good), f"--out {good} is the --body checkpoint")
    link = tmp_path / "link.pt"
    link.symlink_to(good)
    one_line_error(xattn_ray("stitch", "--body", tmp_path / "new.pt", "--embeddings", good, "--side", "target",
                             "--out", link), f"--out {link} is the --embeddings checkpoint")
    assert good.read_bytes() == before
    one_line_error(xattn_ray(*stitch, tmp_path), f"--out {tmp_path}: a folder")
    one_line_error(xattn_ray("stitch", "--body", good, "--embeddings", checkpoints / "truncated.pt", "--side", "source",
                             "--out", tmp_path / "out.pt"), f"{checkpoints / 'truncated.pt'}: not a readable checkpoint")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.pt"]


@pytest.mark.parametrize("options, expected", [
    (["--src-vocab", "0"], "--src-vocab 0: must be at least 1"),
    (["--tgt-vocab", "-5"], "--tgt-vocab -5: must be at least 1"),
    (["--preset", "nope"], "--preset 'nope': no such preset (known: base, small, tiny)"),
])
def test_policies_options(options, expected):
    one_line_error(xattn_ray("policies", *options), expected)


def test_data_mistakes_write_nothing(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    one_line_error(xattn_ray("data", "fetch", "multi30k", "--dest", tmp_path / "d", "--base-url", "example.com/data"),
                   "base URL 'example.com/data' must start with one of https://")
    one_line_error(xattn_ray("data", "fetch", "muse", "--pairs", "de-fr", "--dest", a_file),
                   f"{a_file}: a file is there; the destination must be a folder")
    one_line_error(xattn_ray("data", "fetch", "muse", "--pairs", " , ", "--dest", tmp_path / "d"), "needs --pairs")
    one_line_error(xattn_ray("data", "synth", "--out", a_file), f"--out {a_file}: a file is there")
    one_line_error(xattn_ray("data", "synth", "--out", tmp_path / "s", "--languages", "0"),
                   "languages must be from 1 to")
    one_line_error(xattn_ray("data", "synth", "--out", tmp_path / "s", "--sentences", "-1"),
                   "sentences must be at least 1, got -1")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"] and a_file.read_text() == "mine\n"


def test_a_storage_that_is_a_file_is_refused_by_every_command(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    quickstart = PROJECT / "experiments" / "quickstart.yaml"
    for command in (["validate", quickstart], ["run", quickstart], ["results"]):
        one_line_error(xattn_ray(*command, "--storage", a_file), f"--storage {a_file}: a file is there")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"] and a_file.read_text() == "mine\n"


@pytest.mark.parametrize("args, expected", [
    (["translate", "--checkpoint", "x.pt", "--beam", "abc"], "translate: argument --beam: invalid int value: 'abc'"),
    (["results", "--format", "xml"], "results: argument --format: invalid choice: 'xml'"),
    (["nope"], "argument COMMAND: invalid choice: 'nope'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_argument_mistakes_are_one_line_too(args, expected):
    """argparse's own errors keep the project's shape: no usage block, one line, exit 2."""
    one_line_error(xattn_ray(*args), expected)
