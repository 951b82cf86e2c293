"""Config files: typed, strict (unknown keys fail naming file and key), paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, RetryConfig, expand_paths, load_refresh_config


def _write(tmp_path: Path, text: str, name: str = "refresh.toml") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    (tmp_path / "data" / "b.jsonl").write_text("{}\n")
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """
workspace = "ws"
[gate.near_dup]
enabled = false
[runner]
kind = "dask"
n_workers = 2
shards = 4
[schedule]
cron = "0 3 * * *"
timezone = "Europe/Paris"
[[sources]]
name = "ab"
paths = ["data/*.jsonl"]
format = "hh"
[sources.gate.margins]
min_preference_prob = 0.6
"""


def test_good_config_resolves_paths_against_the_file(tmp_path: Path) -> None:
    cfg = load_refresh_config(_write(tmp_path, GOOD))
    assert cfg.workspace == str(tmp_path / "ws")
    assert cfg.runner.kind == "dask" and cfg.runner.shards == 4
    assert cfg.schedule is not None and cfg.schedule.timezone == "Europe/Paris"
    src = cfg.sources[0]
    assert src.raw_name == "ab_raw"
    ip = cfg.ingest_params(src)
    assert [Path(p).name for p in ip.paths] == ["a.jsonl", "b.jsonl"]
    cp = cfg.clean_params(src, "ab_raw@1")
    assert cp.gate == {"near_dup": {"enabled": False}, "margins": {"min_preference_prob": 0.6}}


@pytest.mark.parametrize(("snippet", "key"), [
    ("[runner]\nkindd = 'thread'\n", "runner.kindd"),
    ("surprise = 1\n", "surprise"),
    ("[schedule]\ncron = 'not a cron'\n", "schedule.cron"),
    ("[schedule]\ncron = '0 3 * * *'\ntimezone = 'Mars/Olympus'\n", "schedule.timezone"),
    ("[runner]\nkind = 'ray'\n", "runner.kind"),
])
def test_bad_keys_name_the_file_and_key(tmp_path: Path, snippet: str, key: str) -> None:
    text = snippet + '[[sources]]\nname = "ab"\npaths = ["data/a.jsonl"]\n'
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_refresh_config(p)
    assert str(p) in str(err.value) and key in str(err.value)


def test_unknown_gate_and_ingest_keys_fail(tmp_path: Path) -> None:
    p = _write(tmp_path, '[gate.dedup]\nfuzzy = true\n[[sources]]\nname = "ab"\npaths = ["data/a.jsonl"]\n')
    with pytest.raises(ConfigError, match=r"gate: .*fuzzy"):
        load_refresh_config(p)
    p = _write(tmp_path, '[[sources]]\nname = "ab"\npaths = ["data/a.jsonl"]\noptions = {pairng = "x"}\n')
    with pytest.raises(ConfigError, match=r"sources\.0\.options: .*pairng"):
        load_refresh_config(p)


def test_bad_names_duplicates_and_missing_files(tmp_path: Path) -> None:
    p = _write(tmp_path, '[[sources]]\nname = "a b"\npaths = ["data/a.jsonl"]\n')
    with pytest.raises(ConfigError, match=r"sources\.0\.name"):
        load_refresh_config(p)
    p = _write(tmp_path, '[[sources]]\nname = "x"\npaths = ["data/a.jsonl"]\n'
                         '[[sources]]\nname = "x"\npaths = ["data/b.jsonl"]\n')
    with pytest.raises(ConfigError, match="used twice"):
        load_refresh_config(p)
    with pytest.raises(ConfigError, match="matches no files"):
        expand_paths([str(tmp_path / "nothing-*.jsonl")])
    with pytest.raises(ConfigError, match="does not exist"):
        load_refresh_config(tmp_path / "missing.toml")
    p = _write(tmp_path, "[[sources]\n", name="broken.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_refresh_config(p)


def test_retry_backoff_is_exponential() -> None:
    assert RetryConfig(retries=3, delay_s=1.5).delays() == [1.5, 3.0, 6.0]
