"""`aha-siem siem setup elasticsearch`: the ingest pipeline and index template, applied by PUT.

Both requests are idempotent (`PUT _ingest/pipeline/<id>`, `PUT _index_template/<name>`): a
second run replaces each resource with the same body. The pipeline goes first, because the
template names it as the data streams' `index.default_pipeline`. Elasticsearch 7.8+ and
OpenSearch 1.x/2.x take the same requests.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from forwarder.resources import shipped
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.elasticsearch.sink import api_key_header
from forwarder.sinks.http_common import build_client

SIEM_DIR = shipped("siem")
"""`siem/` of a source checkout."""
INDEX_TEMPLATE = SIEM_DIR / "elasticsearch" / "index-template.json"
INGEST_PIPELINE = SIEM_DIR / "elasticsearch" / "ingest-pipeline.json"
TEMPLATE_NAME = "aha-audit"
PIPELINE_NAME = "aha-audit"

# Environment variables for credentials with --url (never a command-line argument, which `ps`
# shows). Not AHA_SIEM_*: those are config overrides.
ENV_API_KEY = "ELASTICSEARCH_API_KEY"
ENV_USERNAME = "ELASTICSEARCH_USERNAME"
ENV_PASSWORD = "ELASTICSEARCH_PASSWORD"


class SetupError(Exception):
    """A resource the cluster refused, or a file or setting that cannot be used."""


@dataclass(frozen=True)
class Resource:
    """One PUT: what it is (for messages), its path, its JSON body."""

    kind: str
    path: str
    body: dict[str, Any]

    @property
    def label(self) -> str:
        """`PUT /_ingest/pipeline/aha-audit` (the name an error gives)."""
        return f"PUT {self.path}"


def _read(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        # A checkout has siem/, an installed package <prefix>/share/aha-siem/siem/ (resources).
        raise SetupError(
            f"{path}: no such file (give the file from a checkout's siem/elasticsearch/ "
            "with --template FILE / --pipeline FILE)"
        ) from None
    except (OSError, ValueError) as error:
        raise SetupError(f"{path}: {error}") from error
    if not isinstance(body, dict):
        raise SetupError(f"{path}: not a JSON object")
    return body


def resources(
    *,
    template: Path = INDEX_TEMPLATE,
    pipeline: Path = INGEST_PIPELINE,
    template_name: str = TEMPLATE_NAME,
    pipeline_name: str = PIPELINE_NAME,
    default_pipeline: bool = True,
) -> list[Resource]:
    """The pipeline, then the template (with the pipeline as its default unless told not to)."""
    pipeline_body = _read(pipeline)
    template_body = copy.deepcopy(_read(template))
    if default_pipeline:
        settings = template_body.setdefault("template", {}).setdefault("settings", {})
        settings.setdefault("index", {})["default_pipeline"] = pipeline_name
    return [
        Resource("ingest pipeline", f"/_ingest/pipeline/{pipeline_name}", pipeline_body),
        Resource("index template", f"/_index_template/{template_name}", template_body),
    ]


def connection_from_env(url: str, environ: Mapping[str, str]) -> ElasticsearchSinkConfig:
    """A connection to `url` with credentials from ELASTICSEARCH_API_KEY or _USERNAME/_PASSWORD."""
    settings: dict[str, Any] = {"type": "elasticsearch", "name": "siem-setup", "url": url}
    if environ.get(ENV_API_KEY):
        settings["api_key"] = environ[ENV_API_KEY]
    if environ.get(ENV_USERNAME) or environ.get(ENV_PASSWORD):
        settings["username"] = environ.get(ENV_USERNAME)
        settings["password"] = environ.get(ENV_PASSWORD)
    try:
        return ElasticsearchSinkConfig.model_validate(settings)
    except ValueError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'connection'}: {item['msg']}"
            for item in getattr(error, "errors", lambda: [])()
        )
        raise SetupError(
            f"--url and {ENV_API_KEY} / {ENV_USERNAME} / {ENV_PASSWORD}: {problems or error}"
        ) from None


def safe_url(url: str) -> str:
    """`scheme://host:port/prefix` without any user or password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def _client(config: ElasticsearchSinkConfig) -> httpx.AsyncClient:
    client = build_client(config.http, config.url)
    if config.api_key is not None:
        client.headers["Authorization"] = api_key_header(config.api_key.get_secret_value())
    elif config.username is not None and config.password is not None:
        client.auth = httpx.BasicAuth(config.username, config.password.get_secret_value())
    return client


def _reason(response: httpx.Response) -> str:
    """The cluster's own words: `type: reason` of its error body, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        causes = error.get("root_cause") or []
        cause = causes[0] if causes and isinstance(causes[0], dict) else error
        return f"{cause.get('type', 'error')}: {cause.get('reason', '')}".strip()
    if isinstance(error, str):
        return error
    return json.dumps(body)[:300]


async def apply(config: ElasticsearchSinkConfig, items: list[Resource]) -> list[str]:
    """PUT each resource in order; the first refusal stops with a SetupError naming it."""
    done = []
    async with _client(config) as client:
        for item in items:
            try:
                response = await client.put(item.path, json=item.body)
            except httpx.HTTPError as error:
                raise SetupError(
                    f"{item.label} ({item.kind}) on {safe_url(config.url)}: "
                    f"{type(error).__name__}: {error}"
                ) from None
            if not 200 <= response.status_code < 300:
                raise SetupError(
                    f"{item.label} ({item.kind}) on {safe_url(config.url)}: "
                    f"HTTP {response.status_code} {_reason(response)}"
                )
            done.append(f"{item.label}: {response.status_code} ({item.kind} applied)")
    return done
