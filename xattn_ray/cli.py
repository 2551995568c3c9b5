"""The `xattn-ray` command line.

Every sub-command turns a user mistake (`XattnError`) into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xattn_ray.errors import XattnError

DEFAULT_STORAGE = Path("xattn-runs")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.handler(args) or 0
    except XattnError as err:
        print(f"xattn-ray: error: {err}", file=sys.stderr)
        return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xattn-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check an experiment file and its data; print what would run")
    validate.add_argument("experiment", type=Path)
    validate.add_argument("--storage", type=Path, default=DEFAULT_STORAGE,
                          help="study folder; generated data is cached under STORAGE/cache (default: %(default)s)")
    validate.set_defaults(handler=_validate)

    data = commands.add_parser("data", help="generate or download data").add_subparsers(required=True,
                                                                                         metavar="ACTION")
    synth = data.add_parser("synth", help="write a synthetic language family (corpora + dictionaries)")
    synth.add_argument("--out", type=Path, required=True, help="folder to create")
    synth.add_argument("--languages", type=int, default=2, help="languages besides the pivot (default: 2)")
    synth.add_argument("--sentences", type=int, default=20000, help="training sentences (default: 20000)")
    synth.add_argument("--seed", type=int, default=1)
    synth.add_argument("--valid", type=int, default=500, help="validation sentences (default: 500)")
    synth.add_argument("--test", type=int, default=500, help="test sentences (default: 500)")
    synth.set_defaults(handler=_data_synth)

    fetch = data.add_parser("fetch", help="download a public data set, checked against recorded sha256 sums")
    fetch.add_argument("dataset", choices=["multi30k", "muse"])
    fetch.add_argument("--dest", type=Path, required=True)
    fetch.add_argument("--pairs", help="MUSE dictionary pairs, comma-separated (e.g. de-fr,fr-en)")
    fetch.add_argument("--base-url", help="mirror to download from instead of the published location")
    fetch.set_defaults(handler=_data_fetch)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from xattn_ray.config import load_experiment
    from xattn_ray.data.run_data import experiment_runs, load_run_data, run_name

    experiment = load_experiment(args.experiment)
    runs = experiment_runs(experiment)
    loaded = {run_name(run): load_run_data(experiment, run, args.storage / "cache") for run in runs}
    print(f"experiment {experiment.name!r} ({args.experiment}): config and data OK")
    print(f"{'run':<14} {'pair':<8} {'from':<12} {'train pairs':>11} {'dropped':>8} {'valid':>6}  tests")
    for run in runs:
        data = loaded[run_name(run)]
        origin = "scratch" if run in experiment.parents else f"{run.parent} ({_changed_side(experiment, run)})"
        dropped = data.cleaning.empty + data.cleaning.too_long + data.cleaning.bad_ratio
        tests = ", ".join(f"{name} {len(text)}" for name, text in data.tests.items())
        print(f"{run_name(run):<14} {str(data.pair):<8} {origin:<12} {len(data.train):>11} {dropped:>8} "
              f"{len(data.valid):>6}  {tests}")
    return 0


def _changed_side(experiment, child) -> str:
    """Which side of the parent's pair the child replaces, as the transfer will detect it."""
    parent, pair = experiment.parent(child.parent).language_pair, child.language_pair
    if pair.src != parent.src and pair.tgt == parent.tgt:
        return f"new src {pair.src}"
    if pair.tgt != parent.tgt and pair.src == parent.src:
        return f"new tgt {pair.tgt}"
    return "both sides" if pair.src != parent.src else "same pair"


def _data_synth(args: argparse.Namespace) -> int:
    from xattn_ray.data.synthetic import FamilySpec, generate_family

    spec = FamilySpec(languages=args.languages, sentences=args.sentences, seed=args.seed,
                      valid=args.valid, test=args.test)
    out = generate_family(spec, args.out)
    print(f"wrote synthetic family ({args.languages} languages + pivot, {args.sentences} training "
          f"sentences, seed {args.seed}) to {out}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from xattn_ray.data import fetch

    if args.dataset == "multi30k":
        if args.pairs:
            raise XattnError("--pairs applies to `muse` only")
        files = fetch.fetch_multi30k(args.dest, **_base_url(args))
    else:
        if not args.pairs:
            raise XattnError("`data fetch muse` needs --pairs (e.g. --pairs de-fr,fr-en)")
        pairs = [pair.strip() for pair in args.pairs.split(",") if pair.strip()]
        files = fetch.fetch_muse(pairs, args.dest, **_base_url(args))
    downloaded = sum(f.downloaded for f in files)
    print(f"{args.dataset}: {downloaded} downloaded, {len(files) - downloaded} already present, in {args.dest}")
    return 0


def _base_url(args: argparse.Namespace) -> dict[str, str]:
    return {"base_url": args.base_url} if args.base_url else {}
