from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from protembed_distill.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "distill" / "configs" / "default.toml"

MINIMAL = {
    "teachers": [{"name": "unirep1900"}],
    "data": {"corpus": "corpus.fasta"},
    "student": {"layers": 2, "d_model": 64, "heads": 4, "ffn": 128},
}


def _with(section: str, **values: object) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MINIMAL.items()}
    raw.setdefault(section, {})
    raw[section] = {**raw[section], **values}
    return raw


def test_default_config_loads() -> None:
    cfg = load_config(DEFAULT)
    assert {t.name for t in cfg.teachers} >= {"unirep1900", "near"}
    assert cfg.data.identity_threshold == 0.5
    assert cfg.data.max_length <= cfg.student.max_length
    assert len(cfg.sweep.sizes) >= 3
    assert not str(cfg.teacher_cache_dir()).startswith(str(REPO))  # cache lives outside the repo


def test_negative_dimension_is_rejected_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_with("student", d_model=-3))
    assert "student.d_model" in str(err.value) and "-3" in str(err.value)


def test_unknown_key_is_rejected_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"student\.dmodel: unknown key"):
        parse_config(_with("student", dmodel=64))
    with pytest.raises(ConfigError, match=r"optimiser: unknown key"):
        parse_config({**MINIMAL, "optimiser": {}})


def test_missing_and_inconsistent_values() -> None:
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        parse_config({k: v for k, v in MINIMAL.items() if k != "data"})
    with pytest.raises(ConfigError, match=r"student: .*divisible by heads"):
        parse_config(_with("student", d_model=65))
    with pytest.raises(ConfigError, match=r"teachers: .*repeated: near"):
        parse_config({**MINIMAL, "teachers": [{"name": "near"}, {"name": "near"}]})
    with pytest.raises(ConfigError, match=r"data.max_length .* exceeds student.max_length"):
        parse_config(_with("data", max_length=2048))
    with pytest.raises(ConfigError, match=r"teachers.0.weight"):
        parse_config({**MINIMAL, "teachers": [{"name": "near", "weight": 0}]})


def test_yaml_and_toml_agree(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[teachers]]\nname = "near"\nweight = 2.0\n[data]\ncorpus = "x.fasta"\nmax_length = 300\n'
        "[student]\nlayers = 2\nd_model = 64\nheads = 4\nffn = 128\n"
    )
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        "teachers:\n  - name: near\n    weight: 2.0\ndata:\n  corpus: x.fasta\n  max_length: 300\n"
        "student: {layers: 2, d_model: 64, heads: 4, ffn: 128}\n"
    )
    assert load_config(toml) == load_config(yaml)
    bad = tmp_path / "c.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="unsupported extension"):
        load_config(bad)


def test_cli_reports_bad_config_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protembed_distill.commands import distill

    cfg = tmp_path / "bad.toml"
    cfg.write_text(re.sub(r"d_model = \d+", "d_model = -3", DEFAULT.read_text(), count=1))
    assert "d_model = -3" in cfg.read_text()
    parser = argparse.ArgumentParser()
    distill.add_parser(parser.add_subparsers())
    args = parser.parse_args(["distill", str(cfg), "--stage", "data"])
    assert args.func(args) == 2
    assert "student.d_model: Input should be greater than 0, got -3" in capsys.readouterr().err


def test_override_values_are_read_as_toml() -> None:
    from protembed_distill.config import parse_override_value

    lr = parse_override_value("1e-3")
    assert isinstance(lr, float) and lr == pytest.approx(1e-3)
    assert parse_override_value("64") == 64 and isinstance(parse_override_value("64"), int)
    assert parse_override_value("true") is True and parse_override_value("false") is False
    assert parse_override_value("[1, 2]") == [1, 2]
    assert parse_override_value('"cuda"') == "cuda"
    # anything TOML cannot read stays the text itself: no quotes needed for words, paths, devices
    for text in ("cuda", "cuda:1", "/some/path/esm2_t6", "runs/p1024", ""):
        assert parse_override_value(text) == text


def test_apply_overrides_sets_dotted_keys_on_a_copy() -> None:
    from protembed_distill.config import apply_overrides

    raw = {**MINIMAL, "teachers": [{"name": "unirep1900"}, {"name": "near", "options": {"device": "cpu"}}]}
    out = apply_overrides(
        raw,
        [
            "optim.lr=2e-3",
            "student.pool_dim = 96",
            "run.device=cuda",
            "output.int8=false",
            "teachers.1.options.device=cuda:1",
            "teachers.0.options.max_batch_size=8",
            'data.sources=["uniref", "pdb"]',
        ],
    )
    assert out["optim"] == {"lr": 2e-3}  # a missing table is created
    assert out["student"] == {**MINIMAL["student"], "pool_dim": 96}
    assert out["run"]["device"] == "cuda" and out["output"]["int8"] is False
    assert out["teachers"][1] == {"name": "near", "options": {"device": "cuda:1"}}
    assert out["teachers"][0] == {"name": "unirep1900", "options": {"max_batch_size": 8}}
    assert out["data"] == {"corpus": "corpus.fasta", "sources": ["uniref", "pdb"]}
    # the input is left alone
    assert "pool_dim" not in MINIMAL["student"] and "options" not in raw["teachers"][0]
    assert raw["teachers"][1]["options"] == {"device": "cpu"}
    cfg = parse_config(out)
    assert cfg.student.pool_dim == 96 and cfg.optim.lr == 2e-3 and cfg.output.int8 is False
    assert cfg.teachers[1].options == {"device": "cuda:1"} and cfg.data.sources == ["uniref", "pdb"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("student.layers", r"'student\.layers': expected dotted\.key=value"),
        ("student..layers=2", r"expected dotted\.key=value"),
        ("=2", r"expected dotted\.key=value"),
        ("teachers.1.name=near", r"teachers\.1: no such entry \(1 in the array\)"),
        ("teachers.first.name=near", r"teachers\.first: no such entry"),
        ("student.layers.x=1", r"student\.layers is not a table"),
        ("data.corpus.path=x", r"data\.corpus is not a table"),
    ],
)
def test_bad_overrides_are_rejected(override: str, message: str) -> None:
    from protembed_distill.config import apply_overrides

    with pytest.raises(ConfigError, match=message):
        apply_overrides(MINIMAL, [override])


def test_load_config_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[teachers]]\nname = "near"\n[data]\ncorpus = "x.fasta"\nmax_length = 300\n'
        "[student]\nlayers = 2\nd_model = 64\nheads = 4\nffn = 128\n"
    )
    base = load_config(path)
    cfg = load_config(path, ["student.pool_dim=256", "optim.lr=1e-4", "teachers.0.options.device=cpu"])
    assert base.student.pool_dim == 0 and cfg.student.pool_dim == 256
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.teachers[0].options == {"device": "cpu"}
    assert cfg.data == base.data and load_config(path, []) == base
    # a mistyped key is rejected by validation, naming it, like a typo in the file
    with pytest.raises(ConfigError, match=r"student\.pool_dims: unknown key") as err:
        load_config(path, ["student.pool_dims=3"])
    assert "--set student.pool_dims=3" in str(err.value)
    with pytest.raises(ConfigError, match=r"student\.pool_dim: .*greater than or equal to 0"):
        load_config(path, ["student.pool_dim=-1"])
    with pytest.raises(ConfigError, match=r"no such entry"):
        load_config(path, ["teachers.1.name=x"])


def test_cli_set_reaches_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protembed.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(DEFAULT.read_text())
    assert main(["distill", str(cfg), "--stage", "data", "--set", "student.layers=0"]) == 2
    err = capsys.readouterr().err
    assert "student.layers: Input should be greater than 0, got 0" in err
    assert main(["distill", str(cfg), "--stage", "data", "--set", "student.layers"]) == 2
    assert "expected dotted.key=value" in capsys.readouterr().err
