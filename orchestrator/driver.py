"""The sweep driver: start (or join) Ray, set up MLflow before any trial, build or restore
the Tuner, run it, close the runs and print the summary."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import Callback

from analysis.runs import NOTE_TAG, SWEEP_DIR, WARM_START_TAG, ui_run_url, ui_server
from orchestrator.callbacks import (
    Interruption,
    MlflowStatusCallback,
    StatusTable,
    StudyRecorder,
    journal_sync,
)
from orchestrator.cluster import (
    Capacity,
    NodeWatcher,
    capacity_problems,
    cluster_capacity,
    cluster_problems,
)
from orchestrator.control.lease import SweepBusy, running_elsewhere
from orchestrator.control.notify import Notifier
from orchestrator.control.requests import CancelStopper, driving
from orchestrator.study import (
    StudyPlace,
    WarmStart,
    WarmStartError,
    find_warm_start,
    new_study_place,
    prepare_study,
    restore_study,
    study_of,
)
from orchestrator.summary import print_best, print_summary, summarize, sweep_description
from orchestrator.tracking import (
    create_parent_run,
    describe_changes,
    ensure_experiment,
    is_local_store,
    latest_sweep_run,
    library_versions,
    mark_interrupted,
    provenance_tags,
    record_environment,
    reopen,
    set_status,
)
from orchestrator.trial import SweepContext, run_trial
from orchestrator.tune_objects import (
    BudgetedVariantGenerator,
    BudgetGate,
    make_scheduler,
    make_searcher,
    param_space,
)
from orchestrator.worker.loop import SIMULATED_GPUS_ENV
from search_spaces import SweepSpec

TRIAL_CPU = 0.01  # the trial function only waits on its Train run; the workers hold the CPUs


# Ray Train V2's controller polls its workers every 2 s by default and a worker's report
# waits for that poll: with one report per epoch, short epochs would spend most of their
# time waiting. A quicker poll costs the controller next to nothing.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
# On a cluster, a trial's worker group may wait for a node the autoscaler is booting (a GPU
# instance with its setup takes minutes): Train's 60 s default would tear the placement
# group down and rebuild it every minute meanwhile.
CLUSTER_RAY_ENV = {**RAY_ENV, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800"}
# On a local instance nothing is preempted, and every helper actor is one more Python
# process to start per trial on a laptop's few cores.
LOCAL_RAY_ENV = {**RAY_ENV, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class SweepRefused(Exception):
    """The sweep cannot start as asked; the message says why and what to do."""


def start_ray(address: str | None, *, verbose: bool = False) -> None:
    """A fresh local instance unless an address is given: a stale cluster file on the
    machine must never make us join a dead or unrelated cluster. The workers' lines go to
    Ray's log files (the terminal shows them with `verbose`)."""
    if address is not None:
        try:
            ray.init(
                address=address,
                logging_level="WARNING",
                log_to_driver=verbose,
                runtime_env={"env_vars": CLUSTER_RAY_ENV},
            )
        except ConnectionError as e:  # Ray's own message is a bare "Failed to connect"
            raise SweepRefused(connection_refused(address, e)) from None
        return
    ray.init(
        address="local",
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=verbose,
        runtime_env={
            "env_vars": LOCAL_RAY_ENV,
            "worker_process_setup_hook": "orchestrator.worker.ray_hooks.quiet_worker_logs",
        },
    )


def connection_refused(address: str, error: ConnectionError) -> str:
    """Why `ray.init(address)` failed, in one line: most often a token-authenticated
    cluster (deploy/slurm, ray_cluster.yaml, KubeRay) joined without the token."""
    cause = f"{error} {error.__cause__ or ''}"
    if "InvalidAuthToken" not in cause and "AuthenticationError" not in cause:
        return f"--address {address}: no Ray cluster answers there ({error})"
    if os.environ.get("RAY_AUTH_MODE") != "token":
        return (
            f"--address {address}: that Ray cluster uses token authentication and "
            "RAY_AUTH_MODE is not 'token' here; export RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN_PATH=<the cluster's token file> (a SLURM job keeps it in "
            ".slurm-cct/<job id>/ray_auth_token)"
        )
    return (
        f"--address {address}: that Ray cluster refused this token (RAY_AUTH_TOKEN_PATH="
        f"{os.environ.get('RAY_AUTH_TOKEN_PATH', '~/.ray/auth_token')}): use the cluster's token file"
    )


def max_concurrent(spec: SweepSpec, capacity: Capacity) -> int:
    """resources.max_concurrent_trials, or as many trials as the cluster's CPUs/GPUs fit
    (at its largest on a cluster that grows: the trials beyond today's nodes wait, and
    their demand is what makes the autoscaler add nodes)."""
    r = spec.resources
    if r.max_concurrent_trials:
        return r.max_concurrent_trials
    res = capacity.largest()
    fits = (res.get("CPU", 1) - TRIAL_CPU) // (r.cpus_per_worker * r.workers_per_trial + TRIAL_CPU)
    if r.gpus_per_worker > 0:
        fits = min(fits, res.get("GPU", 0) // (r.gpus_per_worker * r.workers_per_trial))
    return max(1, int(fits))


def check_fit(spec: SweepSpec, address: str) -> tuple[list[str], str]:
    """(problems, one plan line): the sweep's resources against the cluster at `address`,
    for --dry-run; nothing is written anywhere."""
    start_ray(address)
    try:
        capacity = cluster_capacity()
        problems = capacity_problems(spec, capacity)
    finally:
        ray.shutdown()
    if capacity.can_grow:
        where = describe_growth(capacity).split(" (", 1)[0].removeprefix("The cluster can grow")
        return problems, f"  resource fit   checked: the cluster can grow{where}"
    now = capacity.now
    return problems, (
        f"  resource fit   checked: the cluster at {address} has {now.get('CPU', 0):g} CPUs"
        f" and {now.get('GPU', 0):g} GPUs"
    )


def fit_watching(
    tuner: tune.Tuner, spec: SweepSpec, capacity: Capacity
) -> tuple[tune.ResultGrid, str | None]:
    """(results, why it stopped early): `tuner.fit()`, and on a cluster that grows the
    storage probe of each node that joins meanwhile."""
    if not capacity.can_grow:
        return tuner.fit(), None
    print(describe_growth(capacity), flush=True)
    with NodeWatcher(spec.storage_path) as watcher:
        results = tuner.fit()
    return results, watcher.problem


def describe_growth(capacity: Capacity) -> str:
    top = capacity.largest()
    kinds = ", ".join(f"{t.text()} x{t.max_count}" for t in capacity.node_types)
    return (
        f"The cluster can grow to {top['CPU']:g} CPUs and {top['GPU']:g} GPUs ({kinds}; from "
        f"{capacity.source}): trials wait while the autoscaler boots their nodes."
    )


def open_parent_run(
    client: MlflowClient, experiment_id: str, spec: SweepSpec, *, resume: bool, fresh: bool
) -> tuple[str, str, bool]:
    """(parent run id, Ray experiment name, resumed?) — resuming the latest sweep run of
    this name unless --fresh; refusing when the sweep file changed."""
    parent = None if fresh else latest_sweep_run(client, experiment_id, spec.name)
    if parent is not None:
        old_hash = parent.data.tags.get("spec_hash", "")
        if old_hash != spec.hash:
            raise SweepRefused(
                f"sweep {spec.name!r} was started from a different sweep file (spec hash "
                f"{old_hash[:12]} != {spec.hash[:12]}); pass --fresh to start a new sweep run "
                "under the same name, or restore the file to resume"
            )
        reopen(client, parent)  # RUNNING again, no longer tagged interrupted
        return parent.info.run_id, parent.data.tags["ray_experiment"], True
    if resume:
        raise SweepRefused(f"--resume: no earlier run of sweep {spec.name!r} to continue")
    versions = library_versions()
    run_id = create_parent_run(
        client,
        experiment_id,
        sweep=spec.name,
        tags={
            "spec_hash": spec.hash,
            **provenance_tags(),
            NOTE_TAG: sweep_description(spec),
            **{f"version.{k}": v for k, v in versions.items()},
        },
        params=spec.to_dict(),
    )
    ray_experiment = f"{spec.name}-{run_id[:8]}"
    client.set_tag(run_id, "ray_experiment", ray_experiment)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "sweep.json").write_text(json.dumps(spec.to_dict(), indent=2, default=str))
        if spec.source and Path(spec.source).is_file():
            (Path(d) / Path(spec.source).name).write_text(Path(spec.source).read_text())
        client.log_artifacts(run_id, d, SWEEP_DIR)
    return run_id, ray_experiment, False


def make_tuner(
    spec: SweepSpec,
    trainable: Any,
    experiment_path: str,
    callbacks: list[Callback],
    name: str,
    capacity: Capacity,
    *,
    study: StudyPlace | None = None,
    gate: BudgetGate | None = None,
    verbose: bool = False,
) -> tune.Tuner:
    """The sweep's Tuner, restored from Tune's saved state when there is one. With `study`,
    the trials are kept there: by the Optuna searcher itself, or for random and grid by a
    StudyRecorder callback. With `gate` (a sweep with a budget) configurations outside it
    are priced out before they run: told to the Optuna searcher as infeasible, skipped by
    random and grid."""
    if not verbose:
        # Tune's newer console prints its experiment box and TensorBoard hint at any
        # verbosity; the legacy one at verbose=0 prints nothing, and console.py speaks.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if tune.Tuner.can_restore(experiment_path):
        return tune.Tuner.restore(
            experiment_path,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space(spec),
        )
    searcher = make_searcher(spec, study, gate)
    if searcher is None and study is not None:
        callbacks = [*callbacks, StudyRecorder(study, spec)]
    concurrent: int | None = max_concurrent(spec, capacity)
    if searcher is None and gate is not None and spec.budget.active:
        searcher = BudgetedVariantGenerator(gate, max_concurrent=concurrent)
        concurrent = None  # the generator holds it (Tune wraps only a Searcher)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(spec),
            num_samples=spec.tune.num_samples,
            max_concurrent_trials=concurrent,
            time_budget_s=spec.tune.time_budget_s,
            trial_name_creator=lambda t: f"trial-{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial-{t.trial_id}",
            # A finished trial's actor runs the next trial: its process start and imports
            # (torch, mlflow, Ray Train: seconds on a small machine) are paid once per slot.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=spec.storage_path,
            callbacks=callbacks,
            stop=CancelStopper(),  # trials cancelled with `python -m orchestrator.sweep cancel`
            verbose=1 if verbose else 0,  # Tune's own tables and boxes; ours: console.py
            # A trial that fails for good ends normally (orchestrator.worker.loop); what is left
            # is a lost trial actor or driver node, which a retry heals.
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )


def sweep_study(
    client: MlflowClient,
    parent_run_id: str,
    spec: SweepSpec,
    tracking_uri: str,
    *,
    resumed: bool,
    warm: WarmStart | None,
) -> StudyPlace | None:
    """The sweep run's persisted Optuna study, ready (and warm-started) before any trial:
    a new one for a new sweep run, the one its tags name on a resume (none for a sweep
    from before studies were kept: its restored searcher keeps its study in memory)."""
    if resumed:
        place = study_of(client.get_run(parent_run_id))
    else:
        place = new_study_place(client, parent_run_id, spec, tracking_uri, Path.cwd())
    if place is None:
        return None
    copied = prepare_study(place, spec, warm)
    if warm is not None:
        client.set_tag(parent_run_id, WARM_START_TAG, warm.sweep_run_id)
    if copied:
        print(f"Warm start: {copied} trial(s) of sweep run {warm.sweep_run_id}", flush=True)
    return place


def shares_devices(spec: SweepSpec, capacity: Capacity) -> bool:
    """Whether trials may share a device, which makes their latency noisy (SPEC 5)."""
    return max_concurrent(spec, capacity) > 1 or spec.resources.gpus_per_worker < 1


def refuse_early(
    spec: SweepSpec, tracking_uri: str, address: str | None, *, fresh: bool, verbose: bool
) -> tuple[WarmStart | None, Capacity]:
    """What can refuse the sweep before anything is written: a live driver of the same
    sweep, the earlier sweep a warm start names (read before Ray starts), then the cluster, which is started or joined here."""
    held = running_elsewhere(tracking_uri, spec.experiment, spec.name)
    if held is not None:  # another live driver runs this sweep
        raise SweepRefused(str(SweepBusy(spec.name, held)))
    warm = None
    if spec.tune.warm_start:
        try:
            warm = find_warm_start(spec, tracking_uri, fresh=fresh)
        except WarmStartError as e:
            raise SweepRefused(str(e)) from None
    start_ray(address, verbose=verbose)
    capacity = cluster_capacity()
    problems = cluster_problems(spec, tracking_uri, capacity)
    if problems:
        raise SweepRefused("; ".join(problems))
    return warm, capacity


def sweep_tuner(
    ctx: SweepContext,
    ray_experiment: str,
    capacity: Capacity,
    interruption: Interruption,
    study: StudyPlace | None,
    *,
    verbose: bool,
) -> tune.Tuner:
    """The trial function with its resources, the driver's callbacks, and the Tuner."""
    spec = ctx.spec
    trainable = tune.with_resources(functools.partial(run_trial, ctx=ctx), {"cpu": TRIAL_CPU})
    MlflowStatusCallback.live_tracking_uri = ctx.tracking_uri  # also for a restored callback
    callbacks = [
        MlflowStatusCallback(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id),
        interruption,
        StatusTable([key for key, _ in spec.search], spec.base.optim.epochs),
        *journal_sync(study, spec.storage_path, ray_experiment),
    ]
    experiment_path = f"{spec.storage_path.rstrip('/')}/{ray_experiment}"
    gate = BudgetGate(spec, ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
    return make_tuner(
        spec, trainable, experiment_path, callbacks, ray_experiment, capacity,
        study=study, gate=gate, verbose=verbose,
    )  # fmt: skip


def run_sweep(
    spec: SweepSpec,
    *,
    tracking_uri: str,
    address: str | None,
    resume: bool,
    fresh: bool,
    resume_command: str = "python -m orchestrator.sweep --resume",
    verbose: bool = False,
) -> int:
    """Run the sweep to its end: 0, or 1 when every trial errored; after SIGINT or SIGTERM
    128 + the signal (130, 143), with the unfinished runs marked and the command that
    resumes printed."""
    Interruption.reset()
    interruption = Interruption()
    interruption.install()
    client, experiment_id, parent_run_id, results = None, "", "", None
    with ExitStack() as lease:
        try:
            warm, capacity = refuse_early(spec, tracking_uri, address, fresh=fresh, verbose=verbose)
            # Then MLflow, in this one process: several processes creating a new sqlite store
            # at once crash, and every trial must find the experiment and parent run ready.
            client = MlflowClient(tracking_uri)
            artifact_root = Path.cwd() / "mlartifacts" if is_local_store(tracking_uri) else None
            experiment_id = ensure_experiment(client, spec.experiment, artifact_root)
            try:  # one live driver per sweep: this one, from here to the end
                presence = lease.enter_context(driving(tracking_uri, experiment_id, spec.name))
            except SweepBusy as e:
                raise SweepRefused(str(e)) from None
            notifying(lease, spec)  # from here on, the sweep's end is announced
            parent_run_id, ray_experiment, resumed = open_parent_run(
                client, experiment_id, spec, resume=resume, fresh=fresh
            )
            presence.attach(parent_run_id)
            announce_start(client, spec, parent_run_id, tracking_uri, resumed=resumed)
            if resumed:  # the study kept with the checkpoints, where the driver's disk lost it
                restore_study(client.get_run(parent_run_id), spec.storage_path, ray_experiment)
            study = sweep_study(
                client, parent_run_id, spec, tracking_uri, resumed=resumed, warm=warm
            )
            ctx = SweepContext(
                spec=spec,
                tracking_uri=tracking_uri,
                experiment_id=experiment_id,
                parent_run_id=parent_run_id,
                train_storage=f"{spec.storage_path.rstrip('/')}/{ray_experiment}-train",
                latency_shared=shares_devices(spec, capacity),
                simulated_gpus=os.environ.get(SIMULATED_GPUS_ENV) == "1",
            )
            tuner = sweep_tuner(ctx, ray_experiment, capacity, interruption, study, verbose=verbose)
            with quiet_tune_restore_hint():
                results, problem = fit_watching(tuner, spec, capacity)
            if problem:  # a node that cannot see the storage stopped it: not an interruption
                set_status(client, parent_run_id, "FAILED")
                raise SweepRefused(f"{problem}; the sweep stopped: fix it, then --resume")
        except KeyboardInterrupt:
            Interruption.record(signal.SIGINT)
        finally:
            ray.shutdown()
        signum = Interruption.signum()
        if signum is not None:
            return interrupted(
                spec,
                client,
                experiment_id,
                parent_run_id,
                results,
                signum,
                resume_command=resume_command,
            )
        summary = summarize(spec, results, client, experiment_id, parent_run_id)
        errored = summary["errored"]
        set_status(client, parent_run_id, "FAILED" if errored else "FINISHED")
        print_summary(spec, summary, tracking_uri=tracking_uri)
        announce_end(
            spec, summary, ui_run_url(ui_server(tracking_uri), experiment_id, parent_run_id)
        )
        return 1 if errored and not summary["finished"] else 0


def interrupted(
    spec: SweepSpec,
    client: MlflowClient | None,
    experiment_id: str,
    parent_run_id: str,
    results: Any,
    signum: int,
    *,
    resume_command: str,
) -> int:
    """After SIGINT/SIGTERM: the sweep run and its unfinished trial runs KILLED with
    interrupted=true, the finished trials (only those) and the command that resumes."""
    name = signal.Signals(signum).name
    unfinished = 0
    summary = None
    if client is not None and parent_run_id:
        unfinished = mark_interrupted(client, experiment_id, parent_run_id)
        if results is not None:
            summary = summarize(
                spec, results, client, experiment_id, parent_run_id, interrupted=True
            )
    finished = summary["finished"] if summary else 0
    print(
        f"\nSweep {spec.name!r} interrupted by {name}: {finished} trial(s) finished, "
        f"{unfinished} unfinished (their MLflow runs and the sweep run are KILLED with "
        "tag interrupted=true).",
        flush=True,
    )
    if summary and summary["best"]:
        print_best(summary, title=f"Best finished trials of sweep {spec.name!r}")
    print(f"Resume with:\n  {resume_command}", flush=True)
    if Notifier.active is not None:
        Notifier.active.send(
            "interrupted",
            f"sweep {spec.name} interrupted by {name}: {finished} trial(s) finished, "
            f"{unfinished} unfinished; resume with `{resume_command}`",
        )
    return 128 + signum


def announce_start(
    client: MlflowClient, spec: SweepSpec, run_id: str, tracking_uri: str, *, resumed: bool
) -> None:
    """Say which sweep run starts or resumes, and record the environment it runs in: a resume
    under another environment says in one line what changed (both stay recorded)."""
    print(
        f"{'Resuming' if resumed else 'Starting'} sweep {spec.name!r}: MLflow experiment "
        f"{spec.experiment!r} (parent run {run_id}) in {tracking_uri}",
        flush=True,
    )
    changed = record_environment(client, run_id)
    if changed:
        print(
            f"The environment changed since the sweep's last start: {describe_changes(changed)}"
            " (both recorded under environment/ on the sweep run)",
            flush=True,
        )


def notifying(stack: ExitStack, spec: SweepSpec) -> None:
    """The sweep file's webhook, if it names one, for the rest of the driver's life
    (closed, what is pending sent, when `stack` closes)."""
    notifier = Notifier.from_spec(spec.notify, spec.name, dict(os.environ))
    Notifier.active = notifier
    if notifier is None:
        return
    stack.callback(notifier.close)
    stack.callback(setattr, Notifier, "active", None)

    def on_error(kind: Any, error: BaseException | None, tb: Any) -> bool:
        if error is not None:  # refused mid-run, or a crash: the sweep did not end well
            notifier.send("failed", f"sweep {spec.name} failed: {error}")
        return False  # the error goes on

    stack.push(on_error)


def announce_end(spec: SweepSpec, summary: dict[str, Any], link: str) -> None:
    """The `finished` or `failed` message, with the best trial and the sweep run's page."""
    if Notifier.active is None:
        return
    first, _ = spec.objectives[0]
    best = summary["best"][0].get(first) if summary["best"] else None
    shown = f"; best {first} {best:.4f}" if isinstance(best, float) else ""
    kind = "failed" if summary["errored"] and not summary["finished"] else "finished"
    Notifier.active.send(
        kind,
        f"sweep {spec.name} {kind}: {summary['finished']} trial(s) finished, "
        f"{summary['errored']} errored{shown} — {link}",
    )


@contextmanager
def quiet_tune_restore_hint() -> Iterator[None]:
    """Tune ends an interrupted run by suggesting Tuner.restore(...); ours prints the sweep
    command that resumes instead."""
    log = logging.getLogger("ray.tune.tune")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
