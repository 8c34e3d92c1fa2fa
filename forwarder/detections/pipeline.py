"""pySigma processing pipelines: the rules' ECS field names as each target stores them.

The rules in `detections/sigma/` name the fields of the project's ECS event
(`aha.audit.auditable.type`, `user.email`, `aha.audit.changes.field_name`, ...): that event is the
documented contract every sink writes. These pipelines only translate those names where a
target stores the event differently:

- Splunk (HEC sink, `aha:audit:ecs`): the JSON is extracted with Splunk's own paths, in which an
  array of objects reads as `name{}.key`, so `aha.audit.changes.field_name` becomes
  `aha.audit.changes{}.field_name`. Each query is restricted to the sourcetype.
- Elasticsearch (Lucene and ES|QL): the ECS names are the document's; a change's value, old and
  new value are matched on the `.keyword` subfield the project's index template gives them (the
  field itself is analyzed text); ES|QL reads the sink's data streams (`logs-aha.audit-*`).
- Kusto (Microsoft Sentinel, table `AhaAudit_CL`): the sink sends the columns `EventAction`,
  `Message`, `EventTime` and the whole event as the dynamic column `Event`. The query first
  projects each field a rule may use to a plain column, and expands `aha.audit.changes` to one
  row per change (then one row per event again), so a rule on a change's name and value reads
  one change, as it does in the independent test engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sigma.backends.kusto import KustoBackend
from sigma.processing.conditions import ExcludeFieldCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline, QueryPostprocessingItem
from sigma.processing.postprocessing import EmbedQueryTransformation
from sigma.processing.transformations import (
    AddConditionTransformation,
    DetectionItemFailureTransformation,
    FieldMappingTransformation,
    SetStateTransformation,
)

SPLUNK_SOURCETYPE = "aha:audit:ecs"
ELASTICSEARCH_INDEX = "logs-aha.audit-*"
SENTINEL_TABLE = "AhaAudit_CL"

_CHANGES = "aha.audit.changes."


@dataclass(frozen=True)
class KustoField:
    """One ECS field as a column of the Kusto query."""

    column: str
    expression: str | None
    """KQL that computes the column; None for a column the Sentinel sink sends as such."""


# Sentinel's own columns, then the event's fields read from `Event` (the whole ECS event).
# Every value is made a string, so `isempty` (see AhaKustoBackend) tests absence and null alike.
KUSTO_FIELDS: dict[str, KustoField] = {
    "@timestamp": KustoField("EventTime", None),
    "event.action": KustoField("EventAction", None),
    "message": KustoField("Message", None),
    "event.id": KustoField("EventId", "tostring(Event.event.id)"),
    "event.kind": KustoField("EventKind", "tostring(Event.event.kind)"),
    "aha.event": KustoField("AhaEvent", "tostring(Event.aha.event)"),
    "aha.audit.id": KustoField("AuditId", "tostring(Event.aha.audit.id)"),
    "aha.audit.action": KustoField("AuditAction", "tostring(Event.aha.audit.action)"),
    "aha.audit.interesting": KustoField(
        "AuditInteresting", "tostring(Event.aha.audit.interesting)"
    ),
    "aha.audit.auditable.type": KustoField(
        "AuditableType", "tostring(Event.aha.audit.auditable.type)"
    ),
    "aha.audit.auditable.id": KustoField("AuditableId", "tostring(Event.aha.audit.auditable.id)"),
    "aha.audit.associated.type": KustoField(
        "AssociatedType", "tostring(Event.aha.audit.associated.type)"
    ),
    "aha.ingest.source": KustoField("IngestSource", "tostring(Event.aha.ingest.source)"),
    "user.id": KustoField("UserId", "tostring(Event.user.id)"),
    "user.name": KustoField("UserName", "tostring(Event.user.name)"),
    "user.email": KustoField("UserEmail", "tostring(Event.user.email)"),
    "organization.id": KustoField("OrganizationId", "tostring(Event.organization.id)"),
    "organization.name": KustoField("OrganizationName", "tostring(Event.organization.name)"),
    "url.full": KustoField("UrlFull", "tostring(Event.url.full)"),
    # One change per row: see the module docstring.
    "aha.audit.changes.field_name": KustoField("ChangeFieldName", "tostring(Change.field_name)"),
    "aha.audit.changes.value": KustoField("ChangeValue", "tostring(Change.value)"),
    "aha.audit.changes.value_text": KustoField("ChangeValueText", "tostring(Change.value_text)"),
    "aha.audit.changes.old": KustoField("ChangeOld", "tostring(Change.old)"),
    "aha.audit.changes.new": KustoField("ChangeNew", "tostring(Change.new)"),
}


def kusto_preamble() -> str:
    """The table and the projected columns every Kusto query starts with."""
    event_columns = [
        f"{field.column} = {field.expression}"
        for name, field in KUSTO_FIELDS.items()
        if field.expression and not name.startswith(_CHANGES)
    ]
    change_columns = [
        f"{field.column} = {field.expression}"
        for name, field in KUSTO_FIELDS.items()
        if field.expression and name.startswith(_CHANGES)
    ]
    # An event without changes keeps one row (an empty change) rather than vanishing.
    return "\n".join(
        [
            SENTINEL_TABLE,
            f"| extend {', '.join(event_columns)}",
            "| mv-expand Change = iff(array_length(Event.aha.audit.changes) > 0, "
            "Event.aha.audit.changes, dynamic([{}]))",
            f"| extend {', '.join(change_columns)}",
        ]
    )


KUSTO_SUFFIX = "\n| summarize arg_min(TimeGenerated, *) by EventKey"
"""Back to one row per event after the expansion of its changes."""


class AhaKustoBackend(KustoBackend):
    """pySigma's Kusto backend, with null tests that hold for the projected string columns.

    KQL strings are never null: `tostring()` of a missing value is the empty string, which
    `isnull` does not see and `isempty` does.
    """

    field_null_expression: ClassVar[str] = "isempty({field})"


def splunk_pipeline() -> ProcessingPipeline:
    """ECS names as Splunk extracts the JSON of the `aha:audit:ecs` sourcetype."""
    return ProcessingPipeline(
        name="aha-siem-forwarder: ECS events in Splunk",
        priority=20,
        items=[
            ProcessingItem(
                identifier="aha_splunk_array_paths",
                transformation=FieldMappingTransformation(
                    {
                        name: "aha.audit.changes{}." + name[len(_CHANGES) :]
                        for name in KUSTO_FIELDS
                        if name.startswith(_CHANGES)
                    }
                ),
            ),
            ProcessingItem(
                identifier="aha_splunk_sourcetype",
                transformation=AddConditionTransformation({"sourcetype": SPLUNK_SOURCETYPE}),
            ),
        ],
    )


# Fields the project's index template (siem/elasticsearch/index-template.json) maps as analyzed
# text with a keyword subfield: Sigma's exact and wildcard matches read the keyword, as they would
# otherwise compare with single lowercased words.
ELASTICSEARCH_KEYWORD_SUBFIELDS = (
    "aha.audit.changes.value",
    "aha.audit.changes.old",
    "aha.audit.changes.new",
)


def elasticsearch_pipeline() -> ProcessingPipeline:
    """ECS names as the index template maps them; ES|QL reads the sink's data streams."""
    return ProcessingPipeline(
        name="aha-siem-forwarder: ECS events in Elasticsearch",
        priority=20,
        items=[
            ProcessingItem(
                identifier="aha_elasticsearch_keyword_subfields",
                transformation=FieldMappingTransformation(
                    {name: f"{name}.keyword" for name in ELASTICSEARCH_KEYWORD_SUBFIELDS}
                ),
            ),
            ProcessingItem(
                identifier="aha_elasticsearch_index",
                transformation=SetStateTransformation("index", ELASTICSEARCH_INDEX),
            ),
        ],
    )


def kusto_pipeline() -> ProcessingPipeline:
    """ECS names as the columns of `kusto_preamble()` over Sentinel's `AhaAudit_CL`."""
    known = list(KUSTO_FIELDS)
    return ProcessingPipeline(
        name="aha-siem-forwarder: ECS events in Microsoft Sentinel",
        priority=20,
        items=[
            ProcessingItem(
                identifier="aha_kusto_unknown_field",
                transformation=DetectionItemFailureTransformation(
                    "field not projected by the Kusto pipeline: add it to "
                    "forwarder/detections/pipeline.py KUSTO_FIELDS"
                ),
                field_name_conditions=[ExcludeFieldCondition(fields=known)],
            ),
            ProcessingItem(
                identifier="aha_kusto_columns",
                transformation=FieldMappingTransformation(
                    {name: field.column for name, field in KUSTO_FIELDS.items()}
                ),
            ),
        ],
        postprocessing_items=[
            QueryPostprocessingItem(
                identifier="aha_kusto_table",
                transformation=EmbedQueryTransformation(
                    prefix=kusto_preamble() + "\n| where ", suffix=KUSTO_SUFFIX
                ),
            )
        ],
    )
