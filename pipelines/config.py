"""Typed configuration for the data flows: flow parameters and the refresh/serve config file.

Every model forbids unknown keys: a typo in a config file must fail the run, not silently fall back to a
default threshold. Relative paths in a config file are resolved against the file's own folder, so a config
means the same thing whatever directory `dpo refresh` is started from.
"""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage.workspace import check_name


class ConfigError(ValueError):
    """A config file or parameter set is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Strict):
    """Retries of I/O tasks (reading sources, publishing): exponential backoff from `delay_s`."""

    retries: int = Field(3, ge=0, le=20)
    delay_s: float = Field(2.0, ge=0.0)
    jitter: float = Field(0.2, ge=0.0, le=1.0)

    def delays(self) -> list[float]:
        return [self.delay_s * (2**i) for i in range(self.retries)]


class RunnerConfig(_Strict):
    """Which Prefect task runner the clean step uses, and how the pair table is partitioned.

    kind = "dask": the whole gate runs on a Dask cluster (data_quality.cluster): a local one of `n_workers`
    worker processes started for the flow, or the scheduler at `address`. kind = "thread" with shards > 1:
    local checks in shards on threads, global checks on the merged table."""

    kind: Literal["thread", "dask"] = "thread"
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    # Worker processes give real parallelism; threads start faster (tests).
    processes: bool = True
    # thread: 1 = the gate in one task. dask: row partitions on the cluster (1 = two per worker thread).
    shards: int = Field(1, ge=1, le=1024)
    # Optional address of an existing Dask scheduler ("tcp://host:8786"); None starts a local cluster.
    address: str | None = None

    def engine(self, address: str | None = None) -> dict[str, Any]:
        """The gate's engine section that runs every check on this runner's cluster (at `address`)."""
        return {"executor": "cluster", "address": address or self.address, "n_workers": self.n_workers,
                "threads_per_worker": self.threads_per_worker, "processes": self.processes,
                "partitions": self.shards if self.shards > 1 else 0}


class ScheduleConfig(_Strict):
    cron: str
    timezone: str = "UTC"
    deployment_name: str = "refresh"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from prefect.schedules import Cron

        Cron(v)  # raises ValueError on an invalid expression
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {v!r}") from exc
        return v


class SourceConfig(_Strict):
    """One data set: files (paths or globs) ingested together into `<name>_raw`, cleaned into `<name>`."""

    name: str
    paths: list[str] = Field(min_length=1)
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # IngestOptions.from_dict
    # Column map for layouts no reader knows, as on the command line: "prompt=question,chosen=a.0.text,..." or
    # a table {prompt = "question", ...}; the same as options.columns.
    map: str | dict[str, str] | None = None
    gate: dict[str, Any] | None = None  # overrides the top-level gate config key by key
    raw_dataset: str | None = None

    @field_validator("name", "raw_dataset")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return check_name(v) if v is not None else v

    @property
    def raw_name(self) -> str:
        return self.raw_dataset or f"{self.name}_raw"

    @property
    def ingest_options(self) -> dict[str, Any]:
        return {**self.options, "columns": self.map} if self.map is not None else self.options


class IngestParams(_Strict):
    """Parameters of `ingest_flow`: files (already resolved) into one raw snapshot."""

    paths: list[str] = Field(min_length=1)
    dataset: str
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    workspace: str | None = None
    retry: RetryConfig = RetryConfig()

    @field_validator("dataset")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)


class CleanParams(_Strict):
    """Parameters of `clean_flow`: a snapshot reference through the gate into a clean snapshot."""

    ref: str
    dataset: str | None = None
    gate: dict[str, Any] = Field(default_factory=dict)  # GateConfig.from_dict
    eval_prompts_file: str | None = None
    workspace: str | None = None
    runner: RunnerConfig = RunnerConfig()
    retry: RetryConfig = RetryConfig()


class RefreshConfig(_Strict):
    """The file `dpo refresh --config` / `dpo serve --config` reads."""

    workspace: str | None = None
    sources: list[SourceConfig] = Field(min_length=1)
    gate: dict[str, Any] = Field(default_factory=dict)
    eval_prompts_file: str | None = None
    runner: RunnerConfig = RunnerConfig()
    retry: RetryConfig = RetryConfig()
    schedule: ScheduleConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> RefreshConfig:
        names = [s.name for s in self.sources] + [s.raw_name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset names used twice across sources: {dup}")
        return self

    def gate_for(self, source: SourceConfig) -> dict[str, Any]:
        return {**self.gate, **(source.gate or {})}

    def ingest_params(self, source: SourceConfig, workspace: str | None = None) -> IngestParams:
        return IngestParams(paths=expand_paths(source.paths), dataset=source.raw_name, format=source.format,
                            options=source.ingest_options, workspace=workspace or self.workspace, retry=self.retry)

    def clean_params(self, source: SourceConfig, ref: str, workspace: str | None = None) -> CleanParams:
        return CleanParams(ref=ref, dataset=source.name, gate=self.gate_for(source),
                           eval_prompts_file=self.eval_prompts_file, workspace=workspace or self.workspace,
                           runner=self.runner, retry=self.retry)


def expand_paths(patterns: list[str]) -> list[str]:
    """Paths and globs -> sorted existing files (or folders, or hf://datasets/ ids); a pattern that matches
    nothing fails loudly."""
    out: list[str] = []
    for pat in patterns:
        if glob.has_magic(pat):
            hits = sorted(p for p in glob.glob(pat, recursive=True) if Path(p).is_file())
            if not hits:
                raise ConfigError(f"source pattern {pat!r} matches no files")
            out.extend(hits)
        elif Path(pat).exists() or pat.startswith("hf://"):
            out.append(pat)
        else:
            raise ConfigError(f"source file {pat!r} does not exist")
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _format_errors(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def _absolutise(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve relative paths (sources, workspace, eval prompts) against the config file's folder."""

    def fix(p: Any) -> Any:
        if not isinstance(p, str) or p.startswith("hf://") or Path(p).expanduser().is_absolute():
            return p
        return str(base / p)

    raw = dict(raw)
    for key in ("workspace", "eval_prompts_file"):
        if key in raw:
            raw[key] = fix(raw[key])
    sources = raw.get("sources")
    if isinstance(sources, list):
        raw["sources"] = [
            {**s, "paths": [fix(p) for p in s["paths"]]} if isinstance(s, dict) and isinstance(
                s.get("paths"), list) else s
            for s in sources
        ]
    return raw


def _check_gate(where: str, key: str, gate: dict[str, Any]) -> None:
    try:
        from data_quality.gate import GateConfig
    except ImportError:  # the gate is validated again when the clean step builds it
        return
    try:
        GateConfig.from_dict(gate)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from exc


def _check_ingest_options(where: str, key: str, options: dict[str, Any]) -> None:
    from data_quality.ingest.options import IngestOptions

    try:
        IngestOptions.from_dict(options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from exc


def parse_refresh_config(raw: dict[str, Any], *, where: str = "<config>", base: Path | None = None) -> RefreshConfig:
    if base is not None:
        raw = _absolutise(raw, base)
    try:
        cfg = RefreshConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(where, exc)) from None
    _check_gate(where, "gate", cfg.gate)
    for i, src in enumerate(cfg.sources):
        _check_ingest_options(where, f"sources.{i}.options", src.ingest_options)
        if src.gate:
            _check_gate(where, f"sources.{i}.gate", cfg.gate_for(src))
    return cfg


def load_refresh_config(path: str | Path) -> RefreshConfig:
    """Read a TOML (or YAML, if PyYAML is installed) refresh config; errors name the file and the key."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path}: YAML configs need PyYAML; use TOML instead") from exc
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a table of keys")
    return parse_refresh_config(raw, where=str(path), base=path.parent)
