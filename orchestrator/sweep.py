"""`python -m orchestrator.sweep`: run a sweep file as a Ray Tune sweep of Ray Train trials,
tracked in MLflow, resumable. With no --config it runs the offline quickstart. Its commands
`list`, `status`, `stop` and `cancel` see and steer running sweeps (orchestrator/control)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import torch

from cct.cli import OneLineParser, fail
from search_spaces import SpecError, check_resources, format_plan, load_spec

EPILOG = """examples:
  python -m orchestrator.sweep                          # the offline quickstart on digits
  python -m orchestrator.sweep --dry-run                # validate and print the trial plan
  python -m orchestrator.sweep --config search_spaces/cifar100_lsmha.yaml --address auto
  python -m orchestrator.sweep --set optim.epochs=30 --fresh

from any shell that reaches the sweep's MLflow store:
  python -m orchestrator.sweep list                     # sweeps: state, trials, best, hours
  python -m orchestrator.sweep status NAME              # its running trials
  python -m orchestrator.sweep stop NAME                # as SIGTERM does; resumable
  python -m orchestrator.sweep cancel NAME TRIAL        # one trial; the sweep goes on

environment (ray_cluster.yaml sets both on the head node):
  MLFLOW_TRACKING_URI   MLflow store when the sweep file has no tracking.tracking_uri
                        (default: sqlite:///<cwd>/mlflow.db)
  CCT_STORAGE_PATH      Ray results and checkpoints when the file has no storage_path
                        (default: <cwd>/ray_results)
"""


CONTROL_COMMANDS = ("list", "status", "stop", "cancel")  # orchestrator/control/commands.py


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python -m orchestrator.sweep",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="sweep YAML file (default: the packaged quickstart.yaml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted key"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue the interrupted sweep (error if none)"
    )
    mode.add_argument("--fresh", action="store_true", help="start a new sweep run")
    p.add_argument("--dry-run", action="store_true", help="validate, print the plan, start nothing")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's worker lines and Tune's tables (otherwise in Ray's log files)",
    )
    return p.parse_args(argv)


def resume_command(argv: list[str]) -> str:
    """This command as it resumes the sweep it started: --fresh would start another one."""
    args = [a for a in argv if a not in ("--fresh", "--resume")]
    return shlex.join(["python", "-m", "orchestrator.sweep", *args, "--resume"])


def dry_run(spec, tracking_uri: str, address: str | None, *, fresh: bool = False) -> int:
    """The plan; the resource fit checked against the cluster at `address`, or stated as
    unchecked (a cluster sweep file is written on a laptop that cannot run it); the warm
    start's earlier trials checked against the search space (read only)."""
    warm = None
    if spec.tune.warm_start:
        # deferred: ray and mlflow (seconds of imports) load after the sweep file is read
        from orchestrator.study import WarmStartError, find_warm_start

        try:
            warm = find_warm_start(spec, tracking_uri, fresh=fresh)
        except WarmStartError as e:
            fail(e)

    if address is None:
        fit = (
            "  resource fit   unchecked: no --address (given one, the plan is checked against"
            " what that cluster has or can grow to; run here, against this machine)"
        )
    else:
        # deferred: ray and mlflow (seconds of imports) load after the sweep file is read
        from orchestrator.driver import SweepRefused, check_fit

        try:
            errors, fit = check_fit(spec, address)
        except SweepRefused as e:  # a cluster that cannot be joined
            fail(e)
        if errors:
            fail(*errors)
    print(format_plan(spec, tracking_uri=tracking_uri))
    print(fit)
    if warm is not None:
        print(f"  warm start     {len(warm.trials)} trial(s) of sweep run {warm.sweep_run_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CONTROL_COMMANDS:
        # deferred: mlflow (seconds of imports) loads only for the commands that read the store
        from orchestrator.control.commands import main as control

        return control(argv)
    args = parse_args(argv)
    try:
        spec = load_spec(
            args.config, args.set, default_storage=os.environ.get("CCT_STORAGE_PATH") or None
        )
    except SpecError as e:
        fail(*e.errors)

    # deferred: ray and mlflow (seconds of imports) load after the sweep file is read
    from orchestrator.tracking import default_tracking_uri

    tracking_uri = spec.tracking.tracking_uri or default_tracking_uri()  # $MLFLOW_TRACKING_URI
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if args.dry_run:
        return dry_run(spec, tracking_uri, address, fresh=args.fresh)
    if address is None:
        errors = check_resources(spec, cpus=os.cpu_count() or 1, gpus=torch.cuda.device_count())
        if errors:
            fail(*errors)

    # deferred: ray and mlflow (seconds of imports) load after the sweep file is read
    from orchestrator.console import quiet_libraries
    from orchestrator.driver import SweepRefused, run_sweep

    try:
        with quiet_libraries(args.verbose):
            return run_sweep(
                spec,
                tracking_uri=tracking_uri,
                address=address,
                resume=args.resume,
                fresh=args.fresh,
                resume_command=resume_command(argv),
                verbose=args.verbose,
            )
    except SweepRefused as e:
        fail(e)


if __name__ == "__main__":
    sys.exit(main())
