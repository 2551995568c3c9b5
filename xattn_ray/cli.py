"""The `xattn-ray` command line.

Every sub-command turns a user mistake (`XattnError`) into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback. The exit statuses are the command's interface
(`EXIT_CODES`, printed by `--help`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

from xattn_ray.errors import XattnError

DEFAULT_STORAGE = Path("xattn-runs")

DESCRIPTION = """\
Which parts of a pretrained translation Transformer must be fine-tuned to move it to a new
language? xattn-ray runs that ablation (Gheini et al., 2021: "Cross-Attention is All You Need"),
and the structured cross-lingual attention of Foroutan et al. (2023), as Ray Tune studies: parents,
then children under freeze policies x language pairs x seeds, with searches over hyperparameters.
Every run writes BLEU, forgetting, zero-shot and lexicon-induction rows to a Parquet results store.

  xattn-ray run experiments/quickstart.yaml       a whole study, on a local Ray instance
  xattn-ray results --experiment quickstart       what it measured
  xattn-ray report --experiment quickstart --out report/"""

# The exit statuses every command uses; `run` is the one that can end with runs unfinished.
EXIT_CODES = {0: "done", 1: "runs unfinished (failed or stopped; the summary lists them)",
              2: "bad input (one line on stderr names the file, line or key)",
              130: "interrupted (Ctrl-C); `run --resume` continues"}


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        storage = getattr(args, "storage", None)
        if isinstance(storage, Path) and storage.exists() and not storage.is_dir():
            raise XattnError(f"--storage {storage}: a file is there; give a folder (created if missing)")
        return args.handler(args) or 0
    except XattnError as err:
        print(f"xattn-ray: error: {err}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: `xattn-ray: error: ...` and exit 2, no usage block."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.removeprefix("xattn-ray").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"xattn-ray: error: {where}{message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    from xattn_ray.store import code_version

    epilog = "exit status:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    parser = _Parser(prog="xattn-ray", description=DESCRIPTION, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {code_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check an experiment file and its data; print what would run")
    validate.add_argument("experiment", type=Path)
    validate.add_argument("--storage", type=Path, default=DEFAULT_STORAGE,
                          help="study folder; generated data is cached under STORAGE/cache (default: %(default)s)")
    validate.add_argument("--cluster", type=Path, metavar="CLUSTER_YAML",
                          help="a Ray cluster launcher config: also print how many runs train at once on it "
                               "at its maximum size")
    validate.set_defaults(handler=_validate)

    run = commands.add_parser("run", help="run a whole study on Ray: parents, then the children's grid")
    run.add_argument("experiment", type=Path)
    run.add_argument("--storage", type=Path, default=DEFAULT_STORAGE,
                     help="study folder, visible from every node of a cluster (default: %(default)s)")
    run.add_argument("--store", help="results store URI (default: STORAGE/results; may be s3://...)")
    run.add_argument("--resume", action="store_true", help="continue runs an interrupted invocation left")
    run.add_argument("--address", help="Ray cluster to join from one of its nodes (auto, or HOST:6379); default: a local instance")
    run.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all of this machine's)")
    run.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                     help="seconds between progress tables (default: %(default)s)")
    run.add_argument("--tracking", choices=["mlflow", "wandb", "none"],
                     help="track every trial in MLflow or W&B, instead of the file's `tracking:` backend (none: "
                          "no tracking)")
    run.set_defaults(handler=_run)

    train = commands.add_parser("train", help="run one run of an experiment in this process (debugging)")
    train.add_argument("experiment", type=Path)
    train.add_argument("--run", required=True, help="a parent's name or a child's name (default: its pair)")
    train.add_argument("--policy", help="freeze policy of a child run (e.g. xattn)")
    train.add_argument("--seed", type=int, default=1, help="the run's seed (a child starts from its parent's "
                       "`seed`, 1 unless the parent sets it)")
    train.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="study folder (default: %(default)s)")
    train.add_argument("--parent-checkpoint", type=Path,
                       help="parent model of a child run (default: the parent run's best.pt under --storage)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.set_defaults(handler=_train)

    translate = commands.add_parser("translate", help="translate standard input with a checkpoint")
    translate.add_argument("--checkpoint", type=Path, required=True)
    translate.add_argument("--beam", type=int, default=5)
    translate.add_argument("--length-penalty", type=float, default=1.2)
    translate.add_argument("--max-tokens", type=int, default=4096, help="source tokens per batch")
    translate.set_defaults(handler=_translate)

    stitch = commands.add_parser("stitch", help="join one checkpoint's body with another's source or target "
                                                "embeddings (zero-shot pairs, forgetting)")
    stitch.add_argument("--body", type=Path, required=True, help="checkpoint giving everything but the embeddings")
    stitch.add_argument("--embeddings", type=Path, required=True,
                        help="checkpoint giving the SIDE embedding group and tokenizer")
    stitch.add_argument("--side", choices=["source", "target"], required=True)
    stitch.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    stitch.set_defaults(handler=_stitch)

    policies = commands.add_parser("policies", help="parameters each freeze policy trains, for a model size")
    policies.add_argument("--preset", default="base", help="base | small | tiny (default: %(default)s)")
    policies.add_argument("--src-vocab", type=int, default=8000)
    policies.add_argument("--tgt-vocab", type=int, default=8000)
    policies.add_argument("--side", choices=["source", "target"], default="source",
                          help="which side the child replaces (default: %(default)s)")
    policies.add_argument("--pretrained", metavar="MODEL",
                          help="a pretrained Marian model (folder or hub id) instead of a preset and vocabularies")
    policies.add_argument("--json", action="store_true", help="print JSON instead of a table")
    policies.set_defaults(handler=_policies)

    results = commands.add_parser("results", help="print or export rows of the results store, filtered or by SQL")
    location = results.add_mutually_exclusive_group()
    location.add_argument("--store", help="results store: a folder or a URI such as s3://bucket/prefix "
                                          "(default: STORAGE/results)")
    location.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="study folder (default: %(default)s)")
    results.add_argument("--experiment", help="rows of this experiment only")
    results.add_argument("--where", help="SQL condition on the rows (one expression), e.g. "
                                         "\"policy = 'xattn' AND seed = 1\"")
    results.add_argument("--sql", help="one DuckDB SELECT over the table `results` (read-only: no files, no "
                                       "settings), instead of --experiment, --where and --columns")
    results.add_argument("--columns", help="comma-separated columns (default: a readable set for `table`, "
                                           "every column otherwise)")
    results.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    results.add_argument("--out", type=Path, help="write to this file (atomically) instead of standard output")
    results.set_defaults(handler=_results)

    report = commands.add_parser("report", help="write an experiment's paper-style report: Markdown, LaTeX and CSV "
                                                "tables, and figures")
    location = report.add_mutually_exclusive_group()
    location.add_argument("--store", help="results store: a folder or a URI such as s3://bucket/prefix "
                                          "(default: STORAGE/results)")
    location.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="study folder (default: %(default)s)")
    report.add_argument("--experiment", required=True, help="the experiment file's `name`")
    report.add_argument("--out", type=Path, required=True,
                        help="folder for report.md, its PNG figures, report.tex and each table's .tex and .csv")
    report.add_argument("--test", choices=["bootstrap", "randomization"], default="bootstrap",
                        help="the paired significance test of translations, on BLEU and chrF: bootstrap resampling "
                             "(1000 resamples) or approximate randomization (10,000 trials) (default: %(default)s)")
    report.set_defaults(handler=_report)

    schema = commands.add_parser("schema", help="print the experiment file's JSON Schema, for editors to complete "
                                                "and check keys")
    schema.add_argument("--out", type=Path, metavar="FILE",
                        help="write to this file (atomically) instead of standard output")
    schema.set_defaults(handler=_schema)

    data = commands.add_parser("data", help="generate or download data").add_subparsers(required=True,
                                                                                         metavar="ACTION")
    synth = data.add_parser("synth", help="write a synthetic language family (corpora + dictionaries)")
    synth.add_argument("--out", type=Path, required=True, help="folder to create")
    synth.add_argument("--languages", type=int, default=2, help="languages besides the pivot (default: 2)")
    synth.add_argument("--sentences", type=int, default=20000, help="training sentences (default: 20000)")
    synth.add_argument("--seed", type=int, default=1)
    synth.add_argument("--valid", type=int, default=500, help="validation sentences (default: 500)")
    synth.add_argument("--test", type=int, default=500, help="test sentences (default: 500)")
    synth.add_argument("--kinship", type=float, default=0.0,
                       help="chance that each grammatical feature of a language is the pivot's (default: 0)")
    synth.add_argument("--words", type=float, default=1.0,
                       help="share of the world's nouns, verbs and adjectives the family names (default: 1)")
    synth.set_defaults(handler=_data_synth)

    fetch = data.add_parser("fetch", help="download a public data set, checked against recorded sha256 sums")
    fetch.add_argument("dataset", choices=["multi30k", "muse"])
    fetch.add_argument("--dest", type=Path, required=True)
    fetch.add_argument("--pairs", help="MUSE dictionary pairs, comma-separated (e.g. de-fr,fr-en)")
    fetch.add_argument("--base-url", help="mirror to download from instead of the published location")
    fetch.set_defaults(handler=_data_fetch)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from xattn_ray.study.config import load_experiment
    from xattn_ray.study.kinds import kind_of

    experiment = load_experiment(args.experiment)
    kind = kind_of(experiment)
    data = kind.check_data(experiment, args.storage / "cache")
    print(f"experiment {experiment.name!r} ({args.experiment}): config and data OK")
    print("\n".join(data + kind.plan_lines(experiment)))
    _print_resources(experiment)
    if args.cluster is not None:
        _print_cluster_plan(experiment, args.cluster)
    return 0


def _print_resources(experiment) -> None:
    import os

    from xattn_ray.runner.plan import plan_resources

    machine = {"CPU": float(os.cpu_count() or 1)}
    try:
        print(f"  on this machine: {plan_resources(experiment.resources, machine).describe(machine)}")
    except XattnError as err:
        print(f"  on this machine: does not fit ({err}); a cluster given to `run --address` may")


def _print_cluster_plan(experiment, path: Path) -> None:
    """How many runs train at once on the launcher config's cluster grown to its maximum size."""
    from xattn_ray.runner.plan import nodes_at_max_size, plan_resources, trials_at_once
    from xattn_ray.schema import load_yaml

    nodes = nodes_at_max_size(load_yaml(path).data, str(path))
    every = [node for group in nodes.values() for node in group]
    total = {key: sum(node.get(key, 0.0) for node in every) for key in {k for node in every for k in node}}
    plan = plan_resources(experiment.resources, total, autoscaling=True)
    sizes = " + ".join(f"{len(group)} {name}" for name, group in nodes.items() if group)
    print(f"  on {path} at its maximum size ({sizes}): {trials_at_once(plan, every)} runs at once, "
          f"each holding {', '.join(f'{v:g} {k}' for k, v in plan.per_trial().items())}")


def _data_synth(args: argparse.Namespace) -> int:
    from xattn_ray.data.synthetic import FamilySpec, generate_family

    if args.out.exists() and not args.out.is_dir():
        raise XattnError(f"--out {args.out}: a file is there; give a folder to create")
    spec = FamilySpec(languages=args.languages, sentences=args.sentences, seed=args.seed,
                      valid=args.valid, test=args.test, kinship=args.kinship,
                      words=args.words)
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
        pairs = [pair.strip() for pair in (args.pairs or "").split(",") if pair.strip()]
        if not pairs:
            raise XattnError("`data fetch muse` needs --pairs (e.g. --pairs de-fr,fr-en)")
        files = fetch.fetch_muse(pairs, args.dest, **_base_url(args))
    downloaded = sum(f.downloaded for f in files)
    print(f"{args.dataset}: {downloaded} downloaded, {len(files) - downloaded} already present, in {args.dest}")
    return 0


def _base_url(args: argparse.Namespace) -> dict[str, str]:
    return {"base_url": args.base_url} if args.base_url else {}


def _run(args: argparse.Namespace) -> int:
    from xattn_ray.runner.stages import EXIT_INTERRUPTED
    from xattn_ray.runner.study import run_study
    from xattn_ray.runner.summary import format_summary
    from xattn_ray.study.config import load_experiment
    from xattn_ray.study.kinds import kind_of
    from xattn_ray.study.tracking import with_tracking

    if args.address and args.address.startswith("ray://"):
        raise XattnError(f"--address {args.address}: a Ray Client address runs the study's driver on this machine, "
                         f"which reads every run folder; submit it to the cluster instead (`ray job submit "
                         f"--address http://HEAD:8265 -- xattn-ray run ... --address auto`)")
    if args.num_cpus is not None and args.address:
        raise XattnError("--num-cpus sizes the local Ray instance; a cluster given by --address has its own")
    experiment = load_experiment(args.experiment)
    if args.tracking:
        experiment = with_tracking(experiment, args.tracking)
    if "://" in str(args.storage) or str(args.storage).startswith("s3:"):
        raise XattnError(f"--storage {args.storage}: must be a folder every node can see (e.g. a shared "
                         f"filesystem mount); put results on object storage with --store")
    kind_of(experiment).check_data(experiment, args.storage / "cache")  # every data file, before any trial
    store = args.store or str(args.storage.absolute() / "results")
    result = run_study(experiment, args.storage, store, resume=args.resume, address=args.address,
                       num_cpus=args.num_cpus, progress_interval=args.progress_every)
    print(format_summary(result))
    print(f"results store: {store} (xattn-ray results --store {store} --experiment {experiment.name})")
    if result.interrupted:
        import shlex

        options = {"--storage": args.storage if args.storage != DEFAULT_STORAGE else None, "--store": args.store,
                   "--address": args.address, "--num-cpus": args.num_cpus, "--tracking": args.tracking}
        again = shlex.join(["xattn-ray", "run", str(args.experiment)] + [
            part for name, value in options.items() if value is not None for part in (name, str(value))])
        print(f"xattn-ray: interrupted: {len(result.unfinished)} run(s) unfinished; continue with "
              f"`{again} --resume`", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if result.unfinished else 0


def _train(args: argparse.Namespace) -> int:
    from xattn_ray.study.config import ChildConfig, load_experiment
    from xattn_ray.study.runs import parent_spec, run, run_folder
    from xattn_ray.study.spec import RunSpec
    from xattn_ray.study.transfer import check_parent_checkpoint, experiment_runs, run_name

    experiment = load_experiment(args.experiment)
    if experiment.codeswitch is not None:
        raise XattnError(f"{args.experiment}: a code-switching study's runs depend on each other; run the study with "
                         f"`xattn-ray run {args.experiment}`")
    runs = {run_name(entry): entry for entry in experiment_runs(experiment)}
    if args.run not in runs:
        raise XattnError(f"{args.experiment}: no run named {args.run!r} (runs: {', '.join(runs)})")
    if isinstance(runs[args.run], ChildConfig):
        if not args.policy:
            raise XattnError(f"run {args.run!r} is a child: give --policy (e.g. xattn)")
        experiment.policy(args.policy)  # an unknown name fails before any work
        spec = RunSpec("child", args.run, args.seed, args.policy)
        parent = parent_spec(experiment, spec)
        checkpoint = args.parent_checkpoint or run_folder(args.storage, experiment, parent).best_checkpoint
        if not checkpoint.is_file():
            raise XattnError(f"parent checkpoint {checkpoint} not found: train the parent first "
                             f"(xattn-ray train {args.experiment} --run {parent.run} --seed {parent.seed}) "
                             f"or give --parent-checkpoint")
        if args.parent_checkpoint:  # checked before any work; a model other than the parent's trains elsewhere
            check_parent_checkpoint(experiment, spec, args.parent_checkpoint)
    elif args.policy:
        raise XattnError(f"run {args.run!r} is a parent: it trains from scratch, without --policy")
    elif args.parent_checkpoint:
        raise XattnError(f"run {args.run!r} is a parent: it trains from scratch, without --parent-checkpoint")
    else:
        spec = RunSpec("parent", args.run, args.seed)
    result = run(experiment, spec, args.storage, parent_checkpoint=args.parent_checkpoint, resume=args.resume)
    policy = f", {spec.policy}" if spec.policy else ""
    print(f"{spec.run} ({result.pair}{policy}, seed {spec.seed}): "
          f"{result.stop_reason} after {result.updates} updates, {result.train_seconds:.0f} s, "
          f"{result.target_tokens_per_second:.0f} target tokens/s")
    print(f"  trainable params: {result.trainable_params:,} of {result.total_params:,}")
    for name, test in result.tests.items():
        print(f"  {name}: BLEU {test.bleu:.2f}  chrF {test.chrf:.2f}  ({test.bleu_signature})")
    print(f"  checkpoint: {result.checkpoint}")
    return 0 if result.ok else 1


def _translate(args: argparse.Namespace) -> int:
    import math

    _at_least("--beam", args.beam, 1)
    _at_least("--max-tokens", args.max_tokens, 1)
    if not math.isfinite(args.length_penalty):
        raise XattnError(f"--length-penalty {args.length_penalty}: must be a finite number")

    from xattn_ray.engine.checkpoint import load_model
    from xattn_ray.engine.decode import translate

    loaded = load_model(args.checkpoint)
    lines = _stdin_lines()  # all of it, checked, before the first line is translated
    for hypothesis in translate(loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer, lines, beam=args.beam,
                                length_penalty=args.length_penalty, max_tokens=args.max_tokens):
        print(hypothesis)
    return 0


def _at_least(option: str, value: int, minimum: int) -> None:
    """An XattnError naming `option` unless `value` >= `minimum`."""
    if value < minimum:
        raise XattnError(f"{option} {value}: must be at least {minimum}")


def _stdin_lines() -> list[str]:
    """Standard input's lines without their terminators; bytes that are not UTF-8 are an error naming the line."""
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise XattnError(f"standard input, line {line}: not UTF-8 text (byte {data[err.start]:#04x})") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # universal newlines, as text mode reads
    if lines[-1] == "":
        lines.pop()
    return lines


def _stitch(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        raise XattnError(f"--out {args.out}: a folder; give the checkpoint file to write")
    for option, path in (("--body", args.body), ("--embeddings", args.embeddings)):
        if args.out.exists() and path.exists() and args.out.samefile(path):
            raise XattnError(f"--out {args.out} is the {option} checkpoint: write the stitched model to a new file")

    from xattn_ray.engine.checkpoint import load_model, save_model
    from xattn_ray.engine.transfer import graft_embeddings

    body, embeddings = load_model(args.body), load_model(args.embeddings)
    stitched = graft_embeddings(body, embeddings, args.side)
    save_model(args.out, stitched.model, stitched.src_tokenizer, stitched.tgt_tokenizer, extra={"stitched_from": {
        "body": str(args.body.absolute()), "embeddings": str(args.embeddings.absolute()), "side": args.side}})

    def pair(loaded) -> str:
        return f"{loaded.src_tokenizer.language}-{loaded.tgt_tokenizer.language}"

    print(f"wrote {args.out}: {pair(stitched)} model = body of {pair(body)} ({args.body}) + {args.side} "
          f"embeddings of {pair(embeddings)} ({args.embeddings})")
    return 0


def _policies(args: argparse.Namespace) -> int:
    import json

    import torch

    from xattn_ray.engine.model import PRESETS, Transformer, preset_config
    from xattn_ray.engine.policies import GROUPS, POLICIES, ParameterCount, group_sizes, trainable_names

    if args.pretrained:
        from xattn_ray.engine.pretrained import pretrained_config

        config = pretrained_config(args.pretrained)
        args.preset, args.src_vocab, args.tgt_vocab = args.pretrained, config.src_vocab_size, config.tgt_vocab_size
    else:
        if args.preset not in PRESETS:
            raise XattnError(f"--preset {args.preset!r}: no such preset (known: {', '.join(PRESETS)})")
        _at_least("--src-vocab", args.src_vocab, 1)
        _at_least("--tgt-vocab", args.tgt_vocab, 1)
        config = preset_config(args.preset, args.src_vocab, args.tgt_vocab)
    with torch.device("meta"):  # shapes only: a base model's weights are never allocated
        model = Transformer(config)
    sizes = dict(model.named_parameters())
    groups = group_sizes(model)
    rows = []
    for name, policy in POLICIES.items():
        trainable = sum(sizes[n].numel() for n in trainable_names(model, policy, args.side, name))
        rows.append({"policy": name, "trainable": trainable, "total": sum(p.numel() for p in sizes.values()),
                     "summary": ParameterCount(trainable, sum(p.numel() for p in sizes.values())).summary()})
    if args.json:
        print(json.dumps({"preset": args.preset, "src_vocab": args.src_vocab, "tgt_vocab": args.tgt_vocab,
                          "side": args.side, "groups": groups, "policies": rows}, indent=2))
        return 0
    print(f"{args.preset} model, vocabularies {args.src_vocab}/{args.tgt_vocab}, new {args.side}"
          + (" (the new side's vocabulary size is the parent's here)" if args.pretrained else ""))
    print("groups: " + ", ".join(f"{g} {groups[g]:,}" for g in GROUPS))
    for row in rows:
        print(f"  {row['policy']:<10} {row['summary']}")
    return 0


# What `results --format table` shows unless --columns says otherwise: which run, which figure, the scores.
_RESULTS_TABLE_COLUMNS = ("experiment", "stage", "pair", "policy", "seed", "eval", "test_set", "bleu", "chrf",
                          "reference_bleu", "bli_p1", "status")
_RESULTS_ORDER = ("experiment", "stage", "pair", "policy", "seed", "eval", "test_set")


def _results(args: argparse.Namespace) -> int:
    from xattn_ray.report.formats import csv_text, json_text, parquet_bytes, text_table
    from xattn_ray.store import QueryError, ResultsStore

    if args.sql and (args.experiment or args.where or args.columns):
        raise XattnError("--sql is a whole query: put the experiment, condition and columns inside it "
                         "instead of --experiment, --where or --columns")
    if args.format == "parquet" and args.out is None:
        raise XattnError("--format parquet needs --out FILE")
    store = ResultsStore(args.store or args.storage / "results")
    if args.out is not None and args.out.is_dir():
        raise XattnError(f"--out {args.out} is a folder: give a file name")
    if args.out is not None and store.holds(args.out):  # reading the store never writes into it
        raise XattnError(f"--out {args.out} is inside the results store {store.uri}: write it elsewhere")
    store.check_exists()
    try:
        table = store.sql_table(args.sql) if args.sql else _results_query(store, args)
    except QueryError as err:  # only --sql or --where is user text DuckDB reads; the other parts are checked
        raise XattnError(f"{'--sql' if args.sql else '--where'}: {err}") from None
    if table.num_rows == 0:
        filtered = args.sql or args.experiment or args.where
        print(f"no results in {store.uri}" + (" match the query" if filtered else ""), file=sys.stderr)
    output = {"table": text_table, "csv": csv_text, "json": json_text, "parquet": parquet_bytes}[args.format](table)
    if args.out is None:
        sys.stdout.write(output)
    else:
        from xattn_ray.files import write_atomically

        write_atomically(args.out, output if isinstance(output, bytes) else output.encode())
    return 0


def _report(args: argparse.Namespace) -> int:
    from xattn_ray.report.build import build_report
    from xattn_ray.store import ResultsStore

    store = ResultsStore(args.store or args.storage / "results")
    store.check_exists()
    if store.holds(args.out):  # reading the store never writes into it
        raise XattnError(f"--out {args.out} is inside the results store {store.uri}: write it elsewhere")
    path = build_report(store, args.experiment, args.out, test=args.test)
    print(f"wrote {path}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from xattn_ray.json_schema import json_schema_text
    from xattn_ray.study.config import Experiment

    if args.out is not None and args.out.is_dir():
        raise XattnError(f"--out {args.out} is a folder: give a file name")
    text = json_schema_text(Experiment, title="xattn-ray experiment file")
    if args.out is None:
        sys.stdout.write(text)
    else:
        from xattn_ray.files import write_atomically

        write_atomically(args.out, text.encode())
    return 0


def _results_query(store, args: argparse.Namespace):
    """The rows --experiment, --where and --columns describe, in a stable order, as a pyarrow table."""
    if args.columns:
        columns = [name.strip() for name in args.columns.split(",") if name.strip()]
    else:
        columns = list(_RESULTS_TABLE_COLUMNS) if args.format == "table" else None
    return store.select(args.experiment, args.where, columns, order_by=_RESULTS_ORDER)
