"""Convert the project's Sigma rules to each SIEM's query language with pySigma."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sigma.backends.elasticsearch import ESQLBackend, LuceneBackend
from sigma.backends.splunk import SplunkBackend
from sigma.collection import SigmaCollection
from sigma.conversion.base import Backend
from sigma.correlations import SigmaCorrelationRule
from sigma.rule import SigmaRule

from forwarder.detections.pipeline import (
    AhaKustoBackend,
    elasticsearch_pipeline,
    kusto_pipeline,
    splunk_pipeline,
)
from forwarder.resources import shipped

RULES_DIR = shipped("detections", "sigma")
"""The rules of a source checkout (`detections/sigma/`)."""

CORRELATION_UNSUPPORTED = "Backend does not support correlation rules."
"""pySigma's own message (NotImplementedError) from a backend without correlation support."""


@dataclass(frozen=True)
class Target:
    """One query language: its backend with the project's pipeline, and its file suffix."""

    name: str
    suffix: str
    backend: Callable[[], Backend]


TARGETS: dict[str, Target] = {
    "splunk": Target("splunk", "spl", lambda: SplunkBackend(splunk_pipeline())),
    "elasticsearch-esql": Target(
        "elasticsearch-esql", "esql", lambda: ESQLBackend(elasticsearch_pipeline())
    ),
    "elasticsearch-lucene": Target(
        "elasticsearch-lucene", "lucene", lambda: LuceneBackend(elasticsearch_pipeline())
    ),
    "kusto": Target("kusto", "kql", lambda: AhaKustoBackend(kusto_pipeline())),
}


@dataclass(frozen=True)
class Converted:
    """One rule for one target: its queries, or why the target cannot express it."""

    rule: str
    target: str
    queries: list[str]
    unsupported: str | None = None


class RuleError(ValueError):
    """A rule file that is not a valid Sigma rule of this project."""


def rule_name(rule: SigmaRule | SigmaCorrelationRule) -> str:
    """The rule's `name` (its file's stem and its folder under `detections/tests/`)."""
    if not rule.name:
        raise RuleError(f"{rule.source}: a rule needs a `name`")
    return rule.name


def load_rules(directory: Path = RULES_DIR) -> SigmaCollection:
    """Every `*.yml` rule under `directory`, references between them resolved."""
    paths = sorted(directory.glob("*.yml"))
    if not paths:
        raise RuleError(f"{directory}: no Sigma rules (*.yml); give the folder with --rules DIR")
    collection = SigmaCollection.load_ruleset([str(path) for path in paths])
    collection.resolve_rule_references()
    return collection


def fresh(rule: SigmaRule | SigmaCorrelationRule) -> SigmaCollection:
    """`rule` read again from its file, with the rules a correlation refers to.

    pySigma's pipelines change the rules they convert in place (field names, added
    conditions), and a rule a correlation refers to is marked not to be output: each
    conversion starts from the files.
    """
    rules = [ref.rule for ref in rule.rules or []] if isinstance(rule, SigmaCorrelationRule) else []
    texts = [Path(str(item.source.path)).read_text() for item in [*rules, rule] if item.source]
    if len(texts) != len(rules) + 1:
        raise RuleError(f"{rule_name(rule)}: a rule must be read from a file")
    collection = SigmaCollection.from_yaml("\n---\n".join(texts))
    collection.resolve_rule_references()
    return collection


def convert_one(rule: SigmaRule | SigmaCorrelationRule, target: str) -> Converted:
    """`rule` in `target`'s language; a correlation rule takes the rules it refers to along."""
    backend = TARGETS[target].backend()
    try:
        queries = backend.convert(fresh(rule))
    except NotImplementedError as error:
        if not isinstance(rule, SigmaCorrelationRule):
            raise
        return Converted(rule_name(rule), target, [], unsupported=str(error))
    # For a correlation, the rules it refers to are not output on their own (`generate: false`).
    return Converted(rule_name(rule), target, [str(query) for query in queries])


def convert_all(collection: SigmaCollection, target: str) -> list[Converted]:
    """Every rule of `collection` in `target`'s language, in the collection's order."""
    return [convert_one(rule, target) for rule in collection.rules]


def file_name(item: Converted) -> str:
    """`<rule>.<suffix>`, or `<rule>.<suffix>.unsupported` when the target cannot express it."""
    name = f"{item.rule}.{TARGETS[item.target].suffix}"
    return name if item.unsupported is None else name + ".unsupported"


def file_text(item: Converted) -> str:
    """The queries, or the reason the target cannot express the rule."""
    if item.unsupported is not None:
        return f"{item.target}: {item.unsupported}\n"
    return "\n\n".join(item.queries) + "\n"


def write(converted: list[Converted], output: Path) -> list[Path]:
    """One file per rule (`file_name`), so an unsupported rule is never silently missing."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for item in converted:
        path = output / file_name(item)
        path.write_text(file_text(item))
        written.append(path)
    return written
