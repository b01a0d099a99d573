"""`densepred <command>`: every pipeline stage is one command with explicit inputs and outputs.

    densepred synth    --params P [--dataset {nyud,taskonomy}] --out DIR
    densepred prepare  --params P --dataset {nyud,taskonomy} --src DIR --out DIR
    densepred train    --params P --job NAME --stage {pretrain,finetune} [--init CKPT] --out DIR
    densepred evaluate --params P --job NAME --ckpt CKPT --out FILE.json
    densepred reference --params P --dataset D --out FILE.json   the trivial predictor's scores
    densepred tune     --params P --sweep NAME --out DIR
    densepred tables   --params P --out DIR [--only TABLE] [--html]
    densepred check    --params P              every output agrees with its stage's current settings
    densepred check-table BUILT COMMITTED      a rebuilt table reproduces a committed one (--exact)
    densepred compare  --params P --a JOB --b JOB --metric COLUMN [--dataset D] [--alpha A]
    densepred schema   [--out FILE]
    densepred sync-tracking [PATH ...]      upload MLflow records kept while the server was down

Every command takes `--set KEY=VALUE` (repeatable) to override one params value.

Exit statuses: 0 done; 2 a user or environment fault (bad params, missing or corrupt input, no
space left on device, permission denied), reported as one line naming the file and the cause;
130 SIGINT (Ctrl-C); 143 SIGTERM (`train` first saves a checkpoint to resume from); 1 a bug (with
its traceback). Unfinished outputs are removed on every failure. `--debug` or `DENSEPRED_DEBUG=1`
prints the full traceback of a fault as well.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from densepred import __version__, run_failure
from densepred.config import Params
from densepred.errors import Stopped, stopped_by
from densepred.io import DiskFullError, is_disk_full
from densepred.params_loading import load_params
from densepred.stage_run import StageRun
from densepred.tracking import missing_http_defaults

# OSError covers the environment: a full disk, permissions, unreadable files.
USER_ERRORS = (ValueError, KeyError, OSError)


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.set)


def _files(args: argparse.Namespace) -> str:
    """The params files of a command, as the user gave them (a profile, then any override sets)."""
    return " ".join(args.params)


def cmd_synth(args: argparse.Namespace) -> None:
    params = _params(args)
    from densepred.data.synthetic import synthesize_nyud, synthesize_taskonomy
    from densepred.io import atomic_dir

    if params.synth is None:
        raise ValueError(f"{_files(args)}: profile {params.profile!r} has no `synth:` section (real data)")
    cfg = params.synth
    writers = {  # the seed offsets keep each dataset the same whichever way it is generated
        "nyud": lambda out: synthesize_nyud(out, seed=cfg.seed, **cfg.nyud.model_dump()),
        "taskonomy": lambda out: synthesize_taskonomy(out, seed=cfg.seed + 1, **cfg.taskonomy.model_dump()),
    }
    if args.dataset is not None:
        with atomic_dir(Path(args.out)) as tmp:
            writers[args.dataset](tmp)
        print(f"wrote {args.out} ({args.dataset})")
        return
    with atomic_dir(Path(args.out)) as tmp:
        for name, write in writers.items():
            write(tmp / name)
    print(f"wrote {args.out}/nyud and {args.out}/taskonomy")


def cmd_prepare(args: argparse.Namespace) -> None:
    params = _params(args)
    from densepred.data.prepare import prepare_dataset

    if args.dataset not in params.datasets:
        raise ValueError(f"{_files(args)}: no `datasets.{args.dataset}` section")
    cfg = params.datasets[args.dataset]
    options = {}
    if args.dataset == "taskonomy":
        options = {"split_csv": cfg.split_csv, "buildings": cfg.buildings}
    summary = prepare_dataset(
        args.dataset,
        Path(args.src),
        Path(args.out),
        max_bad_fraction=cfg.max_bad_fraction,
        shard_size=cfg.shard_size,
        **options,
    )
    print(f"prepared {args.dataset} into {args.out}: {summary}")
    _record(args, params, lambda st: st.kind == "prepare" and Path(st.outs[0]) == Path(args.out))


def cmd_train(args: argparse.Namespace) -> None:
    from densepred.engine.train import train_job

    init = Path(args.init) if args.init else None
    train_job(StageRun.train(_params(args), args.job, args.stage, Path(args.out), init))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from densepred.engine.evaluate import evaluate_job

    evaluate_job(StageRun.evaluate(_params(args), args.job, Path(args.ckpt), Path(args.out), args.dataset))


def cmd_reference(args: argparse.Namespace) -> None:
    from densepred.engine.reference import evaluate_reference

    evaluate_reference(_params(args), args.dataset, Path(args.out))


def cmd_check_table(args: argparse.Namespace) -> None:
    from densepred.table_check import check_report

    reproduced, report = check_report(Path(args.built), Path(args.committed), args.exact)
    print(report)
    if not reproduced:
        sys.exit(1)


def cmd_tune(args: argparse.Namespace) -> None:
    from densepred.tune import run_sweep

    params = _params(args)
    run_sweep(params, args.sweep, Path(args.out), params_path=_files(args), overrides=args.set)
    _record(
        args, params, lambda st: st.name == f"tune_{args.sweep}" and Path(st.record).parent == Path(args.out)
    )


def cmd_tables(args: argparse.Namespace) -> None:
    from densepred.tables import write_html_pages, write_tables

    params = _params(args)
    runs = Path(args.runs) if args.runs else None
    written = write_tables(params, Path(args.out), runs=runs, only=args.only)
    if args.html:
        for page in write_html_pages(written):
            print(f"wrote {page}")
    if runs is None and Path(args.out) == Path(params.paths.results):
        _record(args, params, lambda st: st.kind == "tables" and args.only in (None, st.name))


def _record(args: argparse.Namespace, params: Params, ran: Callable[[Any], bool]) -> None:
    """Write the record (records.py) of each pipeline stage `ran` says this command just ran where
    the profile puts its outputs; a command run elsewhere by hand records nothing."""
    from densepred.pipeline import build_stages
    from densepred.records import write_stage_record

    for stage in build_stages(params, args.params, args.set):
        if stage.record is not None and ran(stage):
            write_stage_record(stage)


def cmd_check(args: argparse.Namespace) -> None:
    from densepred.pipeline import build_stages
    from densepred.records import stale_stages

    stale = stale_stages(build_stages(_params(args), args.params, args.set))
    for name, why in stale.items():
        print(f"{name}: {why}")
    if stale:
        raise ValueError(
            f"{len(stale)} stage output(s) disagree with {_files(args)}: rerun them "
            "(`snakemake` does) before recording them with `dvc commit`"
        )
    print(f"every existing output agrees with {_files(args)}")


def cmd_compare(args: argparse.Namespace) -> None:
    from densepred.tables import compare

    params = _params(args)
    params.job(args.a)
    params.job(args.b)
    print(compare(params, args.a, args.b, args.metric, args.dataset, args.alpha))


def cmd_dvc(args: argparse.Namespace) -> None:
    import yaml

    from densepred.dvc_stages import dvc_yaml
    from densepred.io import atomic_write_text
    from densepred.pipeline import build_stages

    if len(args.params) != 1:
        raise ValueError(
            f"densepred dvc: give one params file (got {_files(args)}): dvc.yaml's stages list the keys "
            "they read from one file"
        )
    params, path = _params(args), args.params[0]
    doc = dvc_yaml(build_stages(params, path, args.set), path)
    header = f"# Generated from src/densepred/pipeline.py by `densepred dvc --params {path}`.\n"
    text = yaml.safe_dump(doc, sort_keys=False, width=110, default_flow_style=None)
    atomic_write_text(Path(args.out), header + text)
    print(f"wrote {args.out} ({len(doc['stages'])} stages)")


def cmd_plan(args: argparse.Namespace) -> None:
    from densepred.io import atomic_write_json
    from densepred.plan import make_plan, render

    files = args.params if len(args.params) > 1 else args.params[0]
    plan = make_plan(files, args.target, args.set, gpu_mem_gb=args.gpu_mem_gb, mfu=args.mfu)
    print(render(plan))
    if args.out:
        atomic_write_json(Path(args.out), plan)
        print(f"wrote {args.out}")


def cmd_schema(args: argparse.Namespace) -> None:
    from densepred.params_schema import SCHEMA_PATH, write_json_schema

    path = write_json_schema(Path(args.out) if args.out else SCHEMA_PATH)
    print(f"wrote {path}")


def cmd_sync_tracking(args: argparse.Namespace) -> None:
    from densepred.tracking import sync_journals

    total, left = 0, []
    for root in args.paths:
        if not Path(root).exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        uploaded, skipped = sync_journals(Path(root))
        total += uploaded
        left += skipped
    for path, why in left:
        print(f"skipped {path}: {why}")
    print(
        f"uploaded {total} MLflow run(s) from {', '.join(args.paths)}"
        + (f"; {len(left)} left" if left else "")
    )


def _add_common(p: argparse.ArgumentParser, params: bool = True) -> None:
    p.add_argument(
        "--debug", action="store_true", help="on an error, print the full traceback (as DENSEPRED_DEBUG=1)"
    )
    if params:
        p.add_argument(
            "--params",
            required=True,
            nargs="+",
            metavar="P",
            help="params profile (e.g. params/smoke.yaml), optionally followed by override sets merged "
            "over it in order (params/paper.yaml params/rehearse.yaml)",
        )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one params value by dotted key, e.g. --set jobs.polymax_depth.model.num_clusters=32",
    )


Subcommands = argparse._SubParsersAction  # what `add_subparsers` returns


def _add_command(
    sub: Subcommands,
    name: str,
    func: Callable[[argparse.Namespace], None],
    help_: str,
    params: bool = True,
) -> argparse.ArgumentParser:
    """Subcommand `name` running `func`, with the options every command takes (`_add_common`)."""
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(func=func)
    _add_common(p, params=params)
    return p


def _add_data_commands(sub: Subcommands) -> None:
    """`synth` and `prepare`: the raw datasets and their prepared shards."""
    p = _add_command(
        sub, "synth", cmd_synth, "Generate synthetic NYUD-v2 and Taskonomy in their real on-disk formats."
    )
    p.add_argument("--dataset", choices=["nyud", "taskonomy"], help="generate only this dataset")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: the dataset's raw root, or (no --dataset) nyud/ and taskonomy/",
    )

    p = _add_command(sub, "prepare", cmd_prepare, "Validate a raw dataset and convert it to prepared shards.")
    p.add_argument("--dataset", required=True, choices=["nyud", "taskonomy"])
    p.add_argument("--src", required=True, help="raw dataset root")
    p.add_argument("--out", required=True, help="prepared dataset folder (written atomically)")


def _add_model_commands(sub: Subcommands) -> None:
    """`train`, `evaluate` and `reference`: the stages that train or score a predictor."""
    p = _add_command(
        sub, "train", cmd_train, "Train one job's stage (Taskonomy pretraining or NYUD-v2 finetuning)."
    )
    p.add_argument("--job", required=True, help="job name under `jobs:` in the params file")
    p.add_argument("--stage", required=True, choices=["pretrain", "finetune"])
    p.add_argument("--init", help="checkpoint to initialise from (finetuning from pretraining)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, resolved config, logs")

    p = _add_command(
        sub, "evaluate", cmd_evaluate, "Evaluate a checkpoint; writes metrics JSON and prediction figures."
    )
    p.add_argument("--job", required=True)
    p.add_argument("--ckpt", required=True, help="checkpoint file")
    p.add_argument("--out", required=True, help="metrics JSON file; figures go beside it")
    p.add_argument(
        "--dataset", choices=["nyud", "taskonomy"], help="dataset to evaluate on (default: the job's)"
    )

    p = _add_command(
        sub,
        "reference",
        cmd_reference,
        "Score the trivial predictor (training-split prior) by the jobs' meters.",
    )
    p.add_argument("--dataset", required=True, choices=["nyud", "taskonomy"])
    p.add_argument("--out", required=True, help="metrics JSON file")


def _add_result_commands(sub: Subcommands) -> None:
    """`check-table`, `tune`, `tables`, `check` and `compare`: the sweeps, the tables and the checks
    of what they hold."""
    p = _add_command(
        sub,
        "check-table",
        cmd_check_table,
        "Compare a rebuilt results table with a committed one.",
        params=False,
    )
    p.add_argument("built", help="the table just built, e.g. results/table2.csv after `make table2`")
    p.add_argument("committed", help="the reference, e.g. `git show HEAD:results/table2.csv > /tmp/t2.csv`")
    p.add_argument(
        "--exact",
        action="store_true",
        help="every cell equal as text (portable CPU kernels, the smoke default), not within tolerances",
    )

    p = _add_command(sub, "tune", cmd_tune, "Run a Ray Tune ablation sweep declared under `sweeps:`.")
    p.add_argument("--sweep", required=True)
    p.add_argument("--out", required=True, help="sweep folder (Ray storage, summary CSV)")

    p = _add_command(sub, "tables", cmd_tables, "Build results tables and figures from evaluation outputs.")
    p.add_argument("--out", required=True, help="results folder (table2.csv, table3.csv, ...)")
    p.add_argument("--runs", help="runs folder to read (default: paths.runs of the profile)")
    p.add_argument("--only", choices=["table2", "table3", "figure7", "ablations"], help="one table only")
    p.add_argument(
        "--html",
        action="store_true",
        help="also write each table CSV as an HTML page, <out>/html/<table>.html (for the Snakemake report)",
    )

    _add_command(
        sub,
        "check",
        cmd_check,
        "Check that every existing training, evaluation and table output was made under the stage's "
        "current settings (exit 2 naming each one that was not).",
    )

    p = _add_command(
        sub,
        "compare",
        cmd_compare,
        "Say whether two jobs differ on a table column beyond seed noise (Welch's t-test over seeds).",
    )
    p.add_argument("--a", required=True, metavar="JOB", help="first job")
    p.add_argument("--b", required=True, metavar="JOB", help="second job")
    p.add_argument("--metric", required=True, metavar="COLUMN", help="table column, e.g. depth_rms")
    p.add_argument("--dataset", default="nyud", choices=["nyud", "taskonomy"])
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")


def _add_tool_commands(sub: Subcommands) -> None:
    """`dvc`, `sync-tracking`, `plan` and `schema`: the pipeline's files, MLflow uploads and planning."""
    p = _add_command(
        sub, "dvc", cmd_dvc, "Write dvc.yaml from the pipeline definition (the Snakefile's stages)."
    )
    p.add_argument("--out", default="dvc.yaml", help="file to write (default dvc.yaml)")

    p = _add_command(
        sub,
        "sync-tracking",
        cmd_sync_tracking,
        "Upload the MLflow records that runs kept in their folders while the tracking server was "
        "unreachable (*tracking_pending.jsonl), each exactly once, and remove them.",
        params=False,
    )
    p.add_argument(
        "paths", nargs="*", default=["runs"], help="folders (or journal files) to search; default runs"
    )

    p = _add_command(
        sub,
        "plan",
        cmd_plan,
        "Before launch: FLOPs, images, memory per GPU, the GPUs or accumulation that fit, and GPU-hours "
        "of the training stages a target needs.",
    )
    p.add_argument(
        "--target",
        nargs="+",
        default=["results/table2.csv", "results/all"],
        help="targets (default: %(default)s)",
    )
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory of one GPU (default 80)")
    p.add_argument(
        "--mfu", type=float, help="model FLOP utilisation (default: results/bench_gpu.json, else 0.35)"
    )
    p.add_argument("--out", help="write the plan as JSON here")

    p = _add_command(
        sub, "schema", cmd_schema, "Export the params JSON schema (for Snakemake's validate).", params=False
    )
    p.add_argument("--out", help="schema file (default workflow/schemas/params.schema.json)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `densepred` and its subcommands (listed in `densepred --help` in the
    order they are added)."""
    parser = argparse.ArgumentParser(
        prog="densepred",
        description="Dense prediction experiment suite: PolyMaX, MQTransformer and DeepLabv3+ on "
        "NYUD-v2 and Taskonomy. Each command is one pipeline stage.",
    )
    parser.add_argument("--version", action="version", version=f"densepred {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(sub)
    _add_model_commands(sub)
    _add_result_commands(sub)
    _add_tool_commands(sub)
    return parser


def error_message(exc: BaseException) -> str:
    """One line for a user or environment fault: the file or key and the cause."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, DiskFullError):
        return str(exc)
    if is_disk_full(exc):
        return f"no space left on device while writing {exc.filename or 'an output'}"
    message = str(exc)
    if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the cause
        lines = [line for line in message.splitlines() if line.strip()]
        message = lines[-1].split(": ", 1)[-1]
    return message


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Stopped`, so temp outputs are removed on the way out.

    `train` installs its own handler around its loop (checkpoint first, then stop); this one covers
    the other commands and the set-up of `train`. Main thread only (signals are delivered there).
    """

    def handler(signum: int, frame: Any) -> None:
        raise stopped_by(signum, "unfinished outputs were removed; rerun the same command")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `densepred` console script; returns the exit status.

    The one line printed for a failure is also recorded, with the command's log, on the MLflow runs
    that failed in it (run_failure.py). MLflow reads the bounds of its calls to a tracking server only
    from the process environment, so the command's defaults for them are set there
    (`tracking.HTTP_DEFAULTS`; a variable the user set wins).
    """
    args = build_parser().parse_args(argv)
    os.environ.update(missing_http_defaults(os.environ))
    debug = args.debug or bool(os.environ.get("DENSEPRED_DEBUG"))
    with run_failure.watch() as watch:
        try:
            with sigterm_stops():
                args.func(args)
        except USER_ERRORS as exc:
            if debug:
                traceback.print_exc()
            return _fail(watch, f"densepred {args.command}: error: {error_message(exc)}", 2)
        except Stopped as exc:
            return _fail(watch, f"densepred {args.command}: {exc.message}", int(exc.code))
        except KeyboardInterrupt:
            what = "interrupted; unfinished outputs were removed; rerun the same command"
            return _fail(watch, f"densepred {args.command}: {what}", 130)
        except Exception as exc:  # a bug: Python prints its traceback on the way out (status 1)
            watch.failed(traceback.format_exception_only(exc)[-1].strip())
            raise
    return 0


def _fail(watch: run_failure.Watch, line: str, status: int) -> int:
    """Print a failure's one line, record it on the runs that failed, return the exit status."""
    print(line, file=sys.stderr, flush=True)
    watch.failed(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
