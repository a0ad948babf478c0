"""Sweep files -> SweepSpec: shipped files load, bad files fail with their exact messages."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis.report import stats
from cct.config import ConfigError, TrainConfig
from cct.data.shapes import dataset_shape
from cct.models import resolve_settings
from search_spaces import (
    SpecError,
    check_resources,
    config_for_trial,
    count_trials,
    format_plan,
    load_spec,
    packaged_spec,
    trial_configs,
)
from search_spaces import spec as spec_module
from search_spaces.shapes import check_shapes
from search_spaces.spec import Domain

SHIPPED = sorted(packaged_spec("quickstart").parent.glob("*.yaml"))
BAD = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path, monkeypatch):
    """Every test runs in an empty folder that must stay empty: loading writes nothing."""
    monkeypatch.chdir(tmp_path)
    yield
    assert list(tmp_path.iterdir()) == []


def _errors(path: Path | str | None, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value.errors


# --------------------------------------------------------------------------------------
# shipped files


def test_four_sweep_files_ship():
    assert {p.stem for p in SHIPPED} >= {
        "quickstart",
        "cifar100_lsmha",
        "cifar100_conv_substitution",
        "flowers102",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_file_loads(path: Path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.source == str(path)
    assert len(spec.hash) == 64
    assert format_plan(spec).startswith(f"Sweep {spec.name!r}")


def test_default_is_the_packaged_quickstart(tmp_path):
    spec = load_spec(None)
    assert spec.name == spec.experiment == "quickstart"
    assert spec.base.data.dataset == "digits"
    assert spec.resources.workers_per_trial == 1
    assert spec.analysis.blocks == "all"
    assert count_trials(spec) == 4
    assert "Trials (4)" in format_plan(spec)
    assert spec.storage_path == str(tmp_path / "ray_results")
    assert spec.tracking.tracking_uri is None  # the orchestrator resolves the sqlite default
    # 16 tokens from 8x8 digits, two blocks at most, conv_blocks never above depth
    assert dict(spec.search)["model.conv_blocks"].values == (0, 1)


def test_bare_name_finds_a_packaged_file():
    assert load_spec("cifar100_lsmha").source == str(packaged_spec("cifar100_lsmha"))


def test_lsmha_reaches_32_heads_and_more():
    spec = load_spec("cifar100_lsmha")
    assert max(spec.search_dict["model.num_heads"].values) >= 32
    assert spec.tune.searcher == "optuna-nsga2" and len(spec.objectives) == 2


def test_conv_substitution_grids_conv_blocks_at_depth_7_with_seeds():
    spec = load_spec("cifar100_conv_substitution")
    assert spec.search_dict["model.conv_blocks"] == Domain("grid", values=(0, 1, 2, 3, 4))
    assert spec.base.model.depth == 7
    assert count_trials(spec) == 5 * len(spec.tune.seeds)


def test_spec_is_frozen():
    spec = load_spec(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# the bad corpus: each file starts with its exact messages as "# expect: ..." lines


def _expected(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    prefix = "# expect: "
    return [
        line[len(prefix) :].replace("{path}", str(path))
        for line in lines
        if line.startswith(prefix)
    ]


def test_corpus_is_large():
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_fails_with_its_exact_messages(path: Path):
    expected = _expected(path)
    assert expected, f"{path.name} has no '# expect:' line"
    assert _errors(path) == expected


def test_every_error_in_a_file_is_reported_at_once():
    errors = _errors(Path(__file__).parent / "bad_specs" / "many_errors.yaml")
    sections = {e.split(":")[0].split(".")[0] for e in errors}
    assert sections >= {"name", "base", "search", "resources", "analysis", "tune"}
    assert len(errors) >= 8


def test_str_of_spec_error_is_one_message_per_line():
    err = SpecError(["a: one", "b: two"])
    assert str(err) == "a: one\nb: two"
    assert pickle.loads(pickle.dumps(err)).errors == ["a: one", "b: two"]


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert _errors(missing) == [f"{missing}: no such sweep file"]


def test_exponent_hint_names_the_fix():
    (msg,) = _errors(None, ("base.optim.lr=5e-4",))
    assert "5.0e-4" in msg and "string" in msg


# --------------------------------------------------------------------------------------
# --set overrides


def test_overrides_apply():
    spec = load_spec(
        None,
        [
            "base.optim.epochs=3",
            "base.optim.lr=1.0e-3",
            "tune.num_samples=2",
            "search.model.num_heads={grid: [2, 4, 8]}",
            "search.model.embed_dim=null",  # null under search: stop searching it
            "tracking.experiment=mine",
        ],
    )
    assert spec.base.optim.epochs == 3 and spec.base.optim.lr == 1e-3
    assert spec.search_dict["model.num_heads"].values == (2, 4, 8)
    assert "model.embed_dim" not in spec.search_dict
    assert spec.experiment == "mine" and spec.name == "quickstart"
    assert count_trials(spec) == 2 * 3 * 2


def test_wrong_overrides_error():
    assert _errors(None, ("tune.searcher=bayes",)) == [
        "tune.searcher: invalid value 'bayes' (choose from optuna-tpe, optuna-nsga2, optuna-gp, optuna-cmaes, random, grid)"
    ]
    assert _errors(None, ("base.optim.lrr=0.1",))[0].startswith(
        "base.optim.lrr: unknown key, did you mean 'lr'?"
    )
    assert _errors(None, ("epochs",)) == [
        "--set 'epochs': expected dotted.key=value, e.g. optim.lr=1.0e-3"
    ]
    assert _errors(None, ("tune.scheduler.asha.max_t=5",)) == [
        "--set 'tune.scheduler.asha.max_t=5': tune.scheduler is 'fifo', not a section"
    ]


# --------------------------------------------------------------------------------------
# hash


def _reverse_keys(x):
    return {k: _reverse_keys(v) for k, v in reversed(x.items())} if isinstance(x, dict) else x


def test_hash_is_stable_across_key_order(tmp_path):
    raw = yaml.safe_load(packaged_spec("quickstart").read_text())
    shuffled = tmp_path / "shuffled.yaml"
    shuffled.write_text(yaml.safe_dump(_reverse_keys(raw), sort_keys=False))
    try:
        assert load_spec(shuffled).hash == load_spec(None).hash
    finally:
        shuffled.unlink()


def test_hash_ignores_where_results_go_and_override_order():
    plain = load_spec(None).hash
    assert load_spec(None, ["storage_path=s3://bucket/runs", "tracking.experiment=x"]).hash == plain
    a = load_spec(None, ["base.optim.epochs=3", "tune.num_samples=2"]).hash
    b = load_spec(None, ["tune.num_samples=2", "base.optim.epochs=3"]).hash
    assert a == b != plain


def test_hash_changes_when_a_searched_range_changes():
    plain = load_spec(None).hash
    assert load_spec(None, ["search.model.num_heads={grid: [2, 8]}"]).hash != plain
    # writing a default value explicitly does not change what the sweep runs
    assert load_spec(None, ["base.optim.beta1=0.9"]).hash == plain


# --------------------------------------------------------------------------------------
# per-trial config and resources


def test_config_for_trial_merges_flat_params():
    spec = load_spec(None, ["tune.max_epochs_without_gain=4"])
    params = {
        "model.num_heads": np.int64(4),  # Tune may hand back numpy scalars
        "model.conv_blocks": 1,
        "model.embed_dim": 64,
        "seed": 3,
    }
    cfg = config_for_trial(spec, params)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.model.num_heads, cfg.model.conv_blocks, cfg.model.embed_dim) == (4, 1, 64)
    assert type(cfg.model.num_heads) is int
    assert cfg.seed == 3
    assert cfg.max_epochs_without_gain == 4
    assert cfg.optim == spec.base.optim and cfg.data == spec.base.data
    assert config_for_trial(spec, {}) == dataclasses.replace(spec.base, max_epochs_without_gain=4)
    with pytest.raises(ConfigError):
        config_for_trial(spec, {"model.heads": 4})


def test_storage_path_resolution(tmp_path):
    assert load_spec(None, ["storage_path=runs"]).storage_path == str(tmp_path / "runs")
    assert load_spec(None, ["storage_path=s3://b/x"]).storage_path == "s3://b/x"


def test_check_resources_says_how_to_ask_for_cpu():
    spec = load_spec("cifar100_lsmha")
    (msg,) = check_resources(spec, cpus=16, gpus=0)
    assert "no GPU" in msg and "--set resources.gpus_per_worker=0" in msg
    assert check_resources(spec, cpus=16, gpus=8) == []
    assert "CPUs" in check_resources(load_spec(None), cpus=0.5, gpus=0)[0]


def test_large_spaces_are_checked_at_their_extremes():
    spec = load_spec(None)
    search = {
        "model.embed_dim": Domain("randint", low=8, high=4096),
        "model.num_heads": Domain("randint", low=1, high=64),
    }
    errors, min_depth = check_shapes(spec.base, search)
    assert min_depth == 2
    assert [str(e) for e in errors] == [
        "search: the combination model.embed_dim=8, model.num_heads=64 cannot work:"
        " model.embed_dim=8 is not divisible by model.num_heads=64"
        " (set model.head_dim to decouple the attention width)"
    ]


def test_ranges_are_read_off_the_fields():
    # One statement of each range: the field's metadata. The validator refuses just outside
    # it and accepts just inside, for base values and searched values alike.
    from cct.typed_reader import field_ranges

    ranges = field_ranges(TrainConfig)
    assert str(ranges["optim.lr"]) == "(0, inf)" and str(ranges["model.dropout"]) == "[0, 1)"
    assert str(ranges["data.augment.erase_prob"]) == "[0, 1]"
    assert _errors(None, ("base.model.dropout=1.0",)) == [
        "base.model.dropout: must be in [0, 1), got 1.0"
    ]
    assert load_spec(None, ["base.model.dropout=0.999"]).base.model.dropout == 0.999
    assert _errors(None, ("search.optim.beta1={uniform: [0.5, 1.0]}",)) == [
        "search.optim.beta1: uniform high: must be in [0, 1), got 1.0"
    ]
    assert _errors(None, ("base.data.augment.erase_prob=1.5",)) == [
        "base.data.augment.erase_prob: must be in [0, 1], got 1.5"
    ]


def test_sections_left_out_take_the_dataclass_defaults():
    from search_spaces import load_spec
    from search_spaces.spec import AnalysisSpec, ResourcesSpec, TuneSpec

    spec = load_spec(None, [])  # the quickstart sets some keys; compare only what it leaves out
    raw = yaml.safe_load(Path(spec.source).read_text())
    for name, cls in (("tune", TuneSpec), ("resources", ResourcesSpec), ("analysis", AnalysisSpec)):
        given = raw.get(name) or {}
        default = cls()
        for f in dataclasses.fields(cls):
            if f.name not in given:
                assert getattr(getattr(spec, name), f.name) == getattr(default, f.name), f.name


def test_one_reader_for_the_train_config_and_the_sweep_base():
    # cct.config.read_fields reads both: the same bad key gives the same message, the sweep
    # file's under `base.`; each problem keeps its key and the value given.
    from cct.typed_reader import Problem, read_fields

    bad = {"optim": {"lrr": 0.1, "batch_size": 64.5}, "model": {"depth": "x"}}
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(bad)
    _, problems = read_fields(TrainConfig, bad)
    assert [p.key for p in problems] == ["optim.lrr", "optim.batch_size", "model.depth"]
    assert problems[1] == Problem("optim.batch_size", "expected an integer, got 64.5")
    assert problems[1].value == 64.5
    assert str(e.value) == "; ".join(map(str, problems))
    sets = ("base.optim.lrr=0.1", "base.optim.batch_size=64.5", "base.model.depth=x")
    assert sorted(_errors(None, sets)) == sorted(f"base.{p}" for p in problems)


def test_warm_start_enters_the_hash_only_when_set():
    # unset, it leaves the hash of every sweep started before it existed as it was
    plain = load_spec("flowers102")  # optuna-tpe
    assert "warm_start" not in spec_module._defining_part(plain)["tune"]
    warm = load_spec("flowers102", ["tune.warm_start=flowers102"])
    assert warm.tune.warm_start == "flowers102" and warm.hash != plain.hash


def test_the_plan_names_the_prices_and_a_new_price_keeps_the_hash():
    plain = load_spec(None)
    priced = load_spec(
        None, ("resources.price_per_gpu_hour=2.5", "resources.price_per_cpu_hour=0.1")
    )
    assert "  prices  " not in format_plan(plain)
    assert (
        "  prices         2.5 per GPU-hour, 0.1 per CPU-hour (the summary's cost)"
        in format_plan(priced)
    )
    assert priced.hash == plain.hash  # prices only turn hours into a cost: resume still works


def test_laptop_verdicts_plan_has_the_designed_structure():
    """search_spaces/laptop_verdicts.yaml, designed from the verdicts' power (its header):
    >= 5 architectures for the sign-flip tests, each with >= 4 attention blocks; LS-MHA head
    counts at one attention width; every conv model matched by a conv_blocks=0 model equal
    in every other knob and seed; 2 seeds; the held-out sizes the TOST and committee tests
    need. The sweep itself is too long for CI (about 25 minutes on 2 cores)."""

    spec = load_spec("laptop_verdicts")
    configs = trial_configs(spec)
    assert configs is not None and len(configs) == count_trials(spec) == 16

    def settings(cfg: TrainConfig):
        classes, channels, size = dataset_shape(cfg.data)
        m = {k: v for k, v in dataclasses.asdict(cfg.model).items() if v is not None}
        return resolve_settings(
            m.pop("variant"), num_classes=classes, in_channels=channels, img_size=size, **m
        )

    resolved = [settings(c) for c in configs]
    assert {s.num_heads * s.head_dim for s in resolved} == {64}  # one attention width
    assert {s.num_heads for s in resolved} == {2, 4, 8, 16}
    assert min(s.depth - s.conv_blocks for s in resolved) >= 4  # attention blocks
    archs = {c.model for c in configs}
    assert len(archs) == 8 >= stats.min_units_for()
    seeds = {a: sorted(c.seed for c in configs if c.model == a) for a in archs}
    assert set(map(tuple, seeds.values())) == {(0, 1)}
    # matched conv ablations: the same config but conv_blocks, for every conv trial
    plain = {dataclasses.replace(c, model=dataclasses.replace(c.model, conv_blocks=0))
             for c in configs if c.model.conv_blocks}  # fmt: skip
    assert plain <= set(configs) and len(plain) == 8
    data = {c.data for c in configs}
    assert len(data) == 1  # one split for every trial: paired tests, committees
    (d,) = data
    assert (d.dataset, d.synthetic_classes, d.val_size, d.synthetic_test) == (
        "synthetic_groups", 20, 2000, 10_000,
    )  # fmt: skip
    assert d.synthetic_train - d.val_size >= 4000
