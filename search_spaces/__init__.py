"""Sweep files (YAML, shipped with the package) and the code that turns one into a
validated, frozen `SweepSpec`. No Ray here: see orchestrator/ for that."""

from search_spaces.load import load_spec, packaged_spec
from search_spaces.plan import count_trials, format_plan, trial_configs
from search_spaces.spec import (
    AnalysisSpec,
    AshaSpec,
    Domain,
    ResourcesSpec,
    SpecError,
    SweepSpec,
    SystemMetricsSpec,
    TrackingSpec,
    TuneSpec,
    check_resources,
    config_for_trial,
    spec_hash,
)

__all__ = [
    "AnalysisSpec",
    "AshaSpec",
    "Domain",
    "ResourcesSpec",
    "SpecError",
    "SweepSpec",
    "SystemMetricsSpec",
    "TrackingSpec",
    "TuneSpec",
    "check_resources",
    "config_for_trial",
    "count_trials",
    "format_plan",
    "load_spec",
    "packaged_spec",
    "spec_hash",
    "trial_configs",
]
