"""Configuration: one YAML file plus ``AHA_SIEM_*`` environment overrides, validated into frozen models."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    field_validator,
    model_validator,
)

from forwarder.backfill.config import AhaConfig
from forwarder.formats.options import FormatsConfig
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.file.config import FileSinkConfig
from forwarder.sinks.http.config import HttpSinkConfig
from forwarder.sinks.kafka.config import KafkaSinkConfig
from forwarder.sinks.sentinel.config import SentinelSinkConfig
from forwarder.sinks.splunk_hec.config import SplunkHecSinkConfig
from forwarder.sinks.syslog.config import SyslogSinkConfig

ENV_PREFIX = "AHA_SIEM_"
ENV_NESTING = "__"

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(Exception):
    """A configuration that cannot be used; the message names every offending key."""


def _require_unique(kind: str, names: list[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{kind} names must be unique; repeated: {', '.join(repeated)}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Model):
    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list; the environment variable KAFKA_BOOTSTRAP overrides it."""
    client_id: str = "aha-siem"
    """Client id sent to the brokers (suffixed with the process role)."""
    request_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long a metadata or admin request may take."""
    idempotent_producer: bool = True
    """Idempotent producers (no duplicates from retries); off only for brokers without it (Tansu)."""
    session_timeout_seconds: float = Field(default=30.0, gt=1)
    """Consumer group session timeout of the worker: how fast a dead worker's partitions move."""
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024)
    """Largest record the producers send (their max_request_size); the raw and invalid topics
    are created with this max.message.bytes. Must hold ingest.max_body_bytes with its headers."""
    metadata_max_age_seconds: float = Field(default=30.0, gt=0, le=3600)
    """How often consumers refresh cluster metadata: how soon a topic created or grown after a
    worker joined (new partitions, a topic missing at its first rebalance) is consumed."""


class TopicsConfig(_Model):
    raw: str = "aha.audit.raw"
    """Webhook bodies exactly as received."""
    invalid: str = "aha.audit.invalid"
    """Bodies that failed validation, with the reason in the `error` header."""
    events: str = "aha.audit.events"
    """Normalized ECS events: the contract for downstream consumers."""
    dlq_prefix: str = "aha.audit.dlq."
    """Dead-letter topics are this prefix plus the sink name."""
    partitions: int = Field(default=8, ge=1, le=10_000)
    """Partitions of every topic the project creates."""
    replication_factor: int = Field(default=1, ge=1, le=32)
    """Replication factor of every topic the project creates, Faust's internal topics included."""

    @field_validator("raw", "invalid", "events")
    @classmethod
    def _legal_topic(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value):
            raise ValueError("a Kafka topic name is 1-249 characters of [A-Za-z0-9._-]")
        return value


def _sha256_hex(value: str) -> str:
    value = value.strip().lower()
    if not _SHA256_HEX.match(value):
        raise ValueError("must be 64 hex characters: a SHA-256, not the secret itself")
    return value


class BasicAuthConfig(_Model):
    username: str = Field(min_length=1)
    """User name Aha! sends (the `user` of https://user:password@host/...)."""
    password_sha256: str
    """Hex SHA-256 of the password; the password itself is never stored."""

    _hex = field_validator("password_sha256")(_sha256_hex)


class TokenConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """Name of the token; travels with every body as the `token-id` header and becomes `organization.id`."""
    sha256: str
    """Hex SHA-256 of the token (`aha-siem token new NAME` prints one); the token itself is never stored."""
    account: str | None = None
    """Aha! account (the `acme` of acme.aha.io); becomes `organization.name`."""
    basic_auth: BasicAuthConfig | None = None
    """When set, requests with this token must also carry these HTTP Basic credentials."""

    _hex = field_validator("sha256")(_sha256_hex)


class TlsConfig(_Model):
    cert_file: Path
    """PEM certificate chain served to clients; re-read on SIGHUP."""
    key_file: Path
    """PEM private key of the certificate; re-read on SIGHUP."""


class SpoolConfig(_Model):
    directory: Path = Path(".run/spool")
    """Folder of the spool segment files (one per ingest process)."""
    max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    """Spool size at which webhooks are answered 503 (and the spool-full alert fires)."""
    segment_bytes: int = Field(default=64 * 1024**2, ge=64 * 1024)
    """Size at which a new segment file is started."""


class IngestConfig(_Model):
    host: str = "0.0.0.0"
    """Address the webhook listener binds to."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port of the webhook listener (also serves /healthz, /readyz and /metrics)."""
    tokens: tuple[TokenConfig, ...] = ()
    """Accepted webhook tokens; Aha!'s Hook URL is https://HOST/v1/aha/TOKEN."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Larger bodies (after gzip decoding) are answered 413; so is a body that, with its key and
    headers, is larger than the raw topic's max.message.bytes or kafka.max_request_bytes."""
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    """Request line and headers larger than this are answered 431."""
    max_headers: int = Field(default=100, ge=8, le=10_000)
    """Requests with more header fields than this are answered 431."""
    produce_timeout_seconds: float = Field(default=1.0, gt=0, lt=4)
    """Longest wait for the Kafka ack before the body goes to the spool; Aha! gives up after 5 s."""
    allowed_cidrs: tuple[IPvAnyNetwork, ...] = ()
    """Client networks allowed to post webhooks (empty: any); others get 403."""
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()
    """Proxies whose X-Forwarded-For is believed; from anyone else it is ignored."""
    auth_failures_per_minute: float = Field(default=10.0, gt=0)
    """Failed authentications a client may make per minute before it is answered 429."""
    auth_failure_burst: int = Field(default=10, ge=1)
    """Failed authentications a client may make at once."""
    max_concurrent_requests: int = Field(default=512, ge=1)
    """Webhook requests handled at once; more are answered 503."""
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """A connection that has not sent a request's headers in this time is closed."""
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """A request whose body has not arrived in this time is answered 408."""
    keep_alive_seconds: float = Field(default=30.0, gt=0)
    """Idle keep-alive connections are closed after this time."""
    invalid_per_second: float = Field(default=10.0, gt=0)
    """Invalid bodies kept in the invalid topic per second (beyond: answered 400, counted, not kept)."""
    invalid_burst: int = Field(default=100, ge=1)
    """Invalid bodies kept at once before the rate applies."""
    tls: TlsConfig | None = None
    """Terminate HTTPS here; leave unset behind a TLS-terminating proxy."""
    spool: SpoolConfig = SpoolConfig()
    """Local spool used while Kafka is down or slow."""

    @model_validator(mode="after")
    def _unique_names(self) -> IngestConfig:
        _require_unique("token", [token.name for token in self.tokens])
        return self


class RocksDBConfig(_Model):
    """Memory of each RocksDB store: one per table and partition (`topics.partitions`).

    A store holds up to `max_write_buffers` write buffers and one block cache, so the tables of a
    worker take at most partitions x tables x (write_buffer_bytes x max_write_buffers +
    block_cache_bytes): 8 x 1 x (2 x 4 + 8) = 128 MiB with realtime dedupe at the defaults (window
    mode has a second table). Faust's own defaults (64 MiB x 3 and a 2 GiB cache per store) let
    a worker grow to gigabytes.
    """

    write_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    """Size of a store's in-memory write buffer (memtable) before it is flushed to disk."""
    max_write_buffers: int = Field(default=2, ge=2)
    """Write buffers a store may hold while one is flushed."""
    block_cache_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    """A store's cache of blocks read from disk."""

    def table_options(self) -> dict[str, int]:
        """The options of Faust's `Table(options=...)` (faust.stores.rocksdb.RocksDBOptions)."""
        return {
            "write_buffer_size": self.write_buffer_bytes,
            "max_write_buffer_number": self.max_write_buffers,
            "block_cache_size": self.block_cache_bytes,
            "block_cache_compressed_size": self.block_cache_bytes,
        }


class WorkerConfig(_Model):
    app_id: str = "aha-siem-worker"
    """Faust application id: the consumer group and the prefix of its internal topics."""
    data_dir: Path = Path(".run/worker")
    """Local state of this worker process (one per process)."""
    metrics_host: str = "0.0.0.0"
    """Address of the worker's /metrics listener."""
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    """Port of the worker's /metrics listener; 0 disables it."""
    include_original: bool = False
    """Copy the raw body into `event.original` (larger events, full fidelity)."""
    batch_max_events: int = Field(default=500, ge=1)
    """Raw records normalized per batch (one Kafka round trip per batch)."""
    batch_max_seconds: float = Field(default=0.05, gt=0)
    """Longest a raw record waits for its batch to fill."""
    rocksdb: RocksDBConfig = RocksDBConfig()
    """Memory of the tables' RocksDB stores (dedupe state, window index, detection windows)."""


class DedupeConfig(_Model):
    mode: Literal["realtime", "window", "off"] = "realtime"
    """realtime: ship on arrival unless already shipped (docs/decisions/0004); window: hold a
    record's audits for `window_seconds` and ship one merged event (docs/decisions/0006);
    off: ship all."""
    collation_horizon_seconds: float = Field(default=3600.0, gt=0)
    """Audits of one record this far apart (by created_at) are compared for collation."""
    retention_seconds: float = Field(default=7 * 86400.0, gt=0)
    """How long a record's state is kept after its last audit (exact copies from resends and
    backfills are recognized for this long)."""
    max_audits_per_record: int = Field(default=1000, ge=10)
    """Audit ids remembered per record (the oldest are forgotten first)."""
    sweep_interval_seconds: float = Field(default=600.0, gt=0)
    """How often expired state is removed and the state gauges are updated."""
    window_seconds: float = Field(default=120.0, gt=0)
    """window mode: how long a record's audits are held, from the first one, before shipping."""
    window_max_audits: int = Field(default=100, ge=2)
    """window mode: a record's group ships at once when it holds this many audits."""
    window_check_interval_seconds: float = Field(default=1.0, gt=0)
    """window mode: how often held groups are checked for a passed window."""
    shutdown_flush_seconds: float = Field(default=10.0, ge=0)
    """window mode: on SIGTERM/SIGINT, how long the worker may spend shipping its held groups
    before it leaves (what is left stays in the changelog table for the next owner)."""


class DetectionsConfig(_Model):
    enabled: bool = False
    """Evaluate the Sigma rules on the events topic (a process of the worker's) and produce alerts."""
    rules_dir: Path | None = None
    """Folder of Sigma rules (*.yml); default: the shipped rules (detections/sigma in a checkout,
    <prefix>/share/aha-siem/detections/sigma once installed)."""
    alerts_topic: str = "aha.audit.alerts"
    """Topic of the ECS alerts (`event.kind: alert`); a sink reads it with `input: alerts`."""
    min_level: Literal["informational", "low", "medium", "high", "critical"] = "low"
    """Single-event rules below this Sigma level raise no alert (they still feed correlations)."""
    disabled_rules: tuple[str, ...] = ()
    """Names of rules that raise no alert of their own."""
    from_beginning: bool = True
    """At the first start (no offsets committed yet), read the events topic from its beginning
    (alerts for the history it keeps); false: only the events that arrive from then on."""

    @field_validator("alerts_topic")
    @classmethod
    def _legal_topic(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value):
            raise ValueError("a Kafka topic name is 1-249 characters of [A-Za-z0-9._-]")
        return value


# One entry per sink type; each sink package owns its config model.
SinkConfig = Annotated[
    FileSinkConfig
    | HttpSinkConfig
    | KafkaSinkConfig
    | ElasticsearchSinkConfig
    | SentinelSinkConfig
    | SyslogSinkConfig
    | SplunkHecSinkConfig,
    Field(discriminator="type"),
]


class Config(_Model):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the JSON log lines written to stderr."""
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    ingest: IngestConfig = IngestConfig()
    worker: WorkerConfig = WorkerConfig()
    sinks: tuple[SinkConfig, ...] = ()
    dedupe: DedupeConfig = DedupeConfig()
    """Dropping exact copies and audits that collated audits already carry."""
    formats: FormatsConfig = FormatsConfig()
    """Options of the output formats (CEF severities, LEEF delimiter, syslog framing)."""
    aha: AhaConfig = AhaConfig()
    """Aha! REST API accounts for `aha-siem backfill` and `aha-siem reconcile`."""
    detections: DetectionsConfig = DetectionsConfig()
    """Streaming alerts: the Sigma rules on the events, alerts to their own topic."""

    @model_validator(mode="after")
    def _body_fits_kafka(self) -> Config:
        from forwarder.records import max_record_bytes

        largest = max_record_bytes(self.ingest.max_body_bytes)
        if largest > self.kafka.max_request_bytes:
            raise ValueError(
                f"ingest.max_body_bytes: {self.ingest.max_body_bytes} bytes of body make Kafka "
                f"records of up to {largest} bytes with key and headers, more than "
                f"kafka.max_request_bytes ({self.kafka.max_request_bytes}); lower "
                "ingest.max_body_bytes or raise kafka.max_request_bytes"
            )
        return self

    @model_validator(mode="after")
    def _unique_sinks(self) -> Config:
        _require_unique("sink", [sink.name for sink in self.sinks])
        own = {self.topics.raw, self.topics.events, self.topics.invalid}
        if self.detections.enabled:
            own.add(self.detections.alerts_topic)
        for sink in self.sinks:
            if sink.input == "alerts" and not self.detections.enabled:
                raise ValueError(f"sink {sink.name!r}: input alerts needs detections.enabled: true")
            # A Kafka sink writing into the project's own topics on its own cluster would feed the
            # worker its own output, forever.
            if not isinstance(sink, KafkaSinkConfig) or sink.bootstrap_servers is not None:
                continue
            if sink.topic in own or sink.topic.startswith(self.topics.dlq_prefix):
                raise ValueError(
                    f"sink {sink.name!r}: topic {sink.topic!r} is one of the project's own "
                    "topics on the same cluster; choose another topic or set bootstrap_servers"
                )
        return self

    def token_accounts(self) -> dict[str, str | None]:
        """Token name -> Aha! account, for `organization.*`."""
        return {token.name: token.account for token in self.ingest.tokens}


def hash_token(token: str) -> str:
    """The hex SHA-256 under which a token is configured."""
    return hashlib.sha256(token.encode()).hexdigest()


def _parse_env_value(raw: str) -> Any:
    # YAML scalars give env values the same typing as the file: 8 -> int, true -> bool.
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _set_path(tree: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node: Any = tree
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{origin}: no list item {part!r} to override")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {'.'.join(path[:depth])} is not a mapping")
        if last:
            node[part] = value
            return
        node = node.setdefault(part, {})


def apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``AHA_SIEM_A__B=value`` (and ``KAFKA_BOOTSTRAP``) onto a config tree."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in _NOT_CONFIG_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_NESTING)]
        if not all(path):
            raise ConfigError(f"{name}: empty key segment")
        _set_path(tree, path, _parse_env_value(environ[name]), name)
    if environ.get("KAFKA_BOOTSTRAP"):
        tree.setdefault("kafka", {})["bootstrap_servers"] = environ["KAFKA_BOOTSTRAP"]
    return tree


# Variables with the prefix that steer tooling rather than configure a process.
_NOT_CONFIG_ENV = frozenset({"AHA_SIEM_CONFIG", "AHA_SIEM_CACHE", "AHA_SIEM_KAFKA_VERSION"})


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def parse(tree: Mapping[str, Any], *, source: str = "config") -> Config:
    """Validate a config tree, raising ConfigError that names each bad key."""
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"invalid configuration in {source}:\n{_format_errors(error)}") from None


def load(path: Path | str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (or nothing), apply the environment, validate."""
    environ = os.environ if environ is None else environ
    tree: Any = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
    return parse(apply_env(tree, environ), source=source)
