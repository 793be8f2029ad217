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
