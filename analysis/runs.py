"""The MLflow run contract: how a sweep's runs are tagged, where their artifacts live, and how
they are found again. `orchestrator/` writes through these names and every reader (the
committee, the report, the SHP CLI) reads through them, so a path or a tag is spelled once.

    experiment (one per sweep name)
      sweep run       tags role=sweep, sweep=<name>                    artifacts sweep/, report/
        trial runs    tags role=trial, trial_id, mlflow.parentRunId    artifacts checkpoint/,
                                                                       logits/logits.npz, shp/
      committee runs  tags role=committee, sweep_run_id                artifacts committee.json

Explicit `MlflowClient(tracking_uri)` everywhere: Tune changes each trial's working directory
and runs trials in other processes, so no global MLflow state is relied on.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient

# tags
ROLE = "role"
SWEEP_ROLE, TRIAL_ROLE, COMMITTEE_ROLE = "sweep", "trial", "committee"
SWEEP_TAG = "sweep"  # the sweep's name, on sweep and committee runs
SWEEP_RUN_TAG = "sweep_run_id"  # on committee runs
TRIAL_ID_TAG = "trial_id"
PARENT_TAG = "mlflow.parentRunId"
STOPPED_EARLY_TAG = "stopped_early"  # "true" on trials a scheduler stopped
CANCELLED_TAG = "cancelled"  # "true" on trials cancelled from a shell (orchestrator/control)
# "true" on a sweep run and its unfinished trial runs stopped by SIGINT/SIGTERM (KILLED, as
# a scheduler-stopped trial is; this tag tells them apart); removed when they resume
INTERRUPTED_TAG = "interrupted"
# on a FAILED trial run that cannot heal by a retry: "diverged", "config" (the model or
# batch cannot be built) or "out_of_memory"; FAILURE_MESSAGE_TAG holds the error's text
FAILURE_TAG, FAILURE_MESSAGE_TAG = "failure_reason", "failure_message"
# The failure_reason of a configuration outside the sweep's budget, never trained: priced
# out by the driver (params, MACs; PRICED_OUT_TAG = "true", no Tune trial) or by its
# trial's latency measurement before the first step.
OVER_BUDGET, PRICED_OUT_TAG = "over_budget", "priced_out"
# "true" once a trial's final metrics and artifacts, and then its SHP analysis, are logged:
# a resume after a crash in either logs neither twice
FINAL_LOGGED_TAG, ANALYSIS_LOGGED_TAG = "final_logged", "analysis_logged"

# on every experiment the product creates: MLflow 3's UI opens an experiment of this kind on
# its training runs (one without a kind opens on the GenAI traces overview, empty here)...
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# ...unless its GenAI / Model training switch is shown (MLflow 3.17): then the switch decides,
# remembered per browser and GenAI at first; this URL parameter sets it to the runs.
UI_RUNS_QUERY = "workflowType=machine_learning"


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default


def ui_server(tracking_uri: str) -> str:
    """The UI that shows the store at `tracking_uri`: the tracking server itself, else
    `mlflow ui` started on the local store."""
    return (
        tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    )


def ui_runs_url(server: str, experiment_id: str) -> str:
    """The page of the UI at `server` that lists the experiment's runs."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?{UI_RUNS_QUERY}"


def ui_run_url(server: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the UI at `server`."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


NOTE_TAG = "mlflow.note.content"  # a run's description in the UI (Markdown)
# on a sweep run: the Optuna study that holds its trials (a journal file on the driver's
# filesystem, see orchestrator/study.py) and the study's name, for optuna-dashboard and
# optuna.load_study; WARM_START_TAG: the sweep run whose trials seeded it
OPTUNA_STORAGE_TAG, OPTUNA_STUDY_TAG = "optuna_storage", "optuna_study"
WARM_START_TAG = "warm_start_from"

# artifact paths, relative to a run's artifact root
CHECKPOINT_DIR = "checkpoint"  # model.json + model.pt (cct/checkpoint.py)
LOGITS_DIR, LOGITS_FILE = "logits", "logits.npz"
LOGITS_ARTIFACT = f"{LOGITS_DIR}/{LOGITS_FILE}"
LOGITS_KEYS = (
    "val_logits",
    "val_ids",
    "val_labels",
    "test_logits",
    "test_ids",
    "test_labels",
    "split_hash",
)
SHP_DIR = "shp"  # the analysis on validation: the only one selection and the report read
SHP_SUMMARY_ARTIFACT = f"{SHP_DIR}/summary.json"
# the same analysis of the trial's untrained model (its initial weights): the SNR reference
SHP_REFERENCE_DIR = "shp_reference"
SHP_REFERENCE_ARTIFACT = f"{SHP_REFERENCE_DIR}/summary.json"
SWEEP_DIR = "sweep"  # the sweep's resolved spec and end-of-sweep summary
# The environment each start of a sweep or trial ran in (cct/environment.py): ENV_DIR/ for the
# first, ENV_DIR/start-<n>/ for each later one, each with environment.json and diff.patch;
# ENV_LATEST_TAG names the newest, ENV_STARTS_TAG counts them.
ENV_DIR, ENV_FILE, ENV_DIFF = "environment", "environment.json", "diff.patch"
ENV_LATEST_TAG, ENV_STARTS_TAG = "environment_latest", "environment_starts"
SWEEP_SUMMARY_ARTIFACT = f"{SWEEP_DIR}/summary.json"
REPORT_DIR = "report"
LOGS_DIR = "logs"  # a trial's worker output: rank<k>-<node>-<pid>.log per rank and attempt
COMMITTEE_JSON = "committee.json"
# per-block SHP summary key -> MLflow metric (step = block index), so the UI draws them
SHP_BLOCK_METRICS = {
    "readout_accuracy": "shp_readout_accuracy",
    "snr_labels": "shp_snr_labels",
    "snr_area": "shp_snr_area",
}


ARCH_KEYS = (
    "variant",
    "num_heads",
    "head_dim",
    "embed_dim",
    "conv_blocks",
    "depth",
    "mlp_ratio",
    "tokenizer_layers",
    "tokenizer_kernel",
    "pos_embedding",
    "conv_block_norm",
    "conv_block_act",
)  # every architectural knob of a trial (cct/models/registry.py)


def shp_dir(heldout: str) -> str:
    """The artifact folder of an SHP analysis: `shp/` on validation; any other held-out
    split gets its own folder (`shp_test/`), so test-derived label sets can never stand in
    for the validation ones that committee selection reads."""
    return SHP_DIR if heldout == "val" else f"{SHP_DIR}_{heldout}"


def shp_metric(name: str, heldout: str) -> str:
    """The per-block metric name of an analysis on `heldout` (shp_test_* off validation)."""
    return name if heldout == "val" else name.replace("shp_", f"shp_{heldout}_", 1)


class RunLookupError(Exception):
    """A store, experiment or run the user named does not exist or is not what was asked
    for; the message names the value (the CLIs answer with one line and exit 2)."""


def default_tracking_uri(cwd: Path | None = None) -> str:
    """The store every command uses unless told otherwise: $MLFLOW_TRACKING_URI (set on a
    cluster's head by ray_cluster.yaml), else mlflow.db in the current folder as an absolute
    URI (Tune changes the working directory of each trial)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def no_progress_bars() -> None:
    """MLflow's artifact downloads print no progress bar (a console's or log's noise)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_mlflow() -> None:
    """MLflow's progress bars, logs and warnings would break a CLI's one-line error contract."""
    no_progress_bars()
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on an existing store: a missing sqlite file is an error, not a new store."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise RunLookupError(f"no MLflow store at {tracking_uri} (give --tracking-uri)")
    return MlflowClient(tracking_uri)


def latest_sweep_run(client: MlflowClient, experiment_id: str, sweep: str | None = None) -> Any:
    """The newest sweep run of the experiment (of that sweep name, if given), or None."""
    where = f"tags.{ROLE} = '{SWEEP_ROLE}'"
    if sweep is not None:
        where += f" and tags.{SWEEP_TAG} = '{sweep}'"
    runs = client.search_runs(
        [experiment_id], filter_string=where, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def find_sweep(
    client: MlflowClient, *, experiment: str | None, sweep_run_id: str | None
) -> tuple[str, Any]:
    """(experiment id, sweep run): the given sweep run, else the experiment's latest one."""
    if sweep_run_id is not None:
        try:
            run = client.get_run(sweep_run_id)
        except MlflowException:
            raise RunLookupError(f"unknown sweep run {sweep_run_id!r}") from None
        role = run.data.tags.get(ROLE)
        if role != SWEEP_ROLE:
            raise RunLookupError(
                f"run {sweep_run_id} is not a sweep's parent run "
                f"(tag {ROLE}={role!r}, expected {SWEEP_ROLE!r})"
            )
        return run.info.experiment_id, run
    exp = client.get_experiment_by_name(experiment or "")
    if exp is None or exp.lifecycle_stage == "deleted":
        raise RunLookupError(f"unknown experiment {experiment!r}")
    run = latest_sweep_run(client, exp.experiment_id)
    if run is None:
        raise RunLookupError(
            f"experiment {experiment!r} has no sweep run (tag {ROLE}={SWEEP_ROLE})"
        )
    return exp.experiment_id, run


# Runs per search_runs page (MLflow's default). One query with max_results=10_000 silently
# cut a larger sweep's runs; pages read them all, each query of a bounded size (1,000
# trial runs on sqlite: 2.6 s CPU in one query or in pages of 1,000, 3.4 s in pages of 200).
PAGE_SIZE = 1000


def search_all(
    client: MlflowClient,
    experiment_id: str,
    filter_string: str,
    order_by: list[str] | None = None,
) -> list:
    """Every run of the experiment that matches, read page by page (MLflow's page tokens)."""
    found: list = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            order_by=order_by,
            max_results=PAGE_SIZE,
            page_token=token,
        )
        found.extend(page)
        token = page.token
        if not token:
            return found


def trial_runs(client: MlflowClient, experiment_id: str, sweep_run_id: str) -> list:
    """Every trial run of the sweep run, in a fixed order (run id) so selection ties are
    broken the same way each time."""
    runs = search_all(
        client,
        experiment_id,
        f"tags.`{PARENT_TAG}` = '{sweep_run_id}' and tags.{ROLE} = '{TRIAL_ROLE}'",
    )
    return sorted(runs, key=lambda r: r.info.run_id)


def find_trial_run(client: MlflowClient, experiment_id: str, sweep_run_id: str, trial_id: str):
    """The trial run of `trial_id` under `sweep_run_id`, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{TRIAL_ID_TAG} = '{trial_id}' and tags.`{PARENT_TAG}` = '{sweep_run_id}'",
        max_results=1,
    )
    return runs[0] if runs else None


def latest_committee_run(client: MlflowClient, experiment_id: str, sweep_run_id: str) -> Any:
    """The newest finished committee run of the sweep run, or None."""
    runs = committee_runs(client, experiment_id, sweep_run_id)
    return runs[-1] if runs else None


def committee_runs(client: MlflowClient, experiment_id: str, sweep_run_id: str) -> list:
    """Every finished committee run of the sweep run, earliest first (the report judges
    the earliest one made with the default rule: rerunning cannot change the verdict)."""
    runs = search_all(
        client,
        experiment_id,
        f"tags.{ROLE} = '{COMMITTEE_ROLE}' and tags.{SWEEP_RUN_TAG} = "
        f"'{sweep_run_id}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def eligible(run: Any, include_stopped: bool) -> bool:
    """Finished trials; scheduler-stopped ones (KILLED + stopped_early) only when asked."""
    if run.info.status == "FINISHED":
        return True
    stopped = run.data.tags.get(STOPPED_EARLY_TAG) == "true" and run.info.status == "KILLED"
    return include_stopped and stopped


def architecture(params: dict[str, str]) -> dict[str, Any]:
    """The model's resolved architecture from the flat `model.*` params: "None" means the
    variant's own value (cct/models/registry.py), filled in from the variant table."""
    # deferred: the run contract stays free of torch (importing cct loads it, about 2.5 s); only this reader needs the variant table
    from cct.models.registry import VARIANTS  # plain data; no model is built

    raw = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
    out: dict[str, Any] = dict(VARIANTS.get(raw.get("variant", ""), {}))
    out["variant"] = raw.get("variant")
    for key, text in raw.items():
        if key != "variant" and text not in ("None", ""):
            out[key] = _number(text)
    if out.get("head_dim") is None and out.get("num_heads"):
        width = out.get("attn_dim") or out.get("embed_dim")
        out["head_dim"] = int(width) // int(out["num_heads"]) if width else None
    return {k: out.get(k) for k in ARCH_KEYS}


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def download(client: MlflowClient, run: Any, artifact: str, workdir: Path) -> Path:
    """Download one artifact of the run (a Run from a search, or a run id) into
    workdir/<run id>/; its local path.

    Given the Run, the file comes straight from the run's artifact root: a run id costs two
    lookups of the run and a search of its logged models per file first (MLflow's runs:/
    resolution), about 0.1 s each time, which made reading a 1,000-trial sweep's three
    files per trial take minutes."""
    run_id = run if isinstance(run, str) else run.info.run_id
    dst = workdir / run_id
    dst.mkdir(parents=True, exist_ok=True)
    if isinstance(run, str):
        return Path(client.download_artifacts(run_id, artifact, str(dst)))
    repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
    if isinstance(repo, LocalArtifactRepository):
        # a local artifact root: read the file where it is (MLflow's copy starts a thread
        # pool per file); the callers only read it
        local = Path(repo.artifact_dir) / artifact
        if not local.exists():
            raise FileNotFoundError(f"run {run_id} has no artifact {artifact!r}")
        return local
    return Path(repo.download_artifacts(artifact, str(dst)))


def checkpoint_uri(run: Any) -> str:
    return f"{run.info.artifact_uri.rstrip('/')}/{CHECKPOINT_DIR}"
