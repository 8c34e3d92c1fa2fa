"""The detections process without Kafka: what `detect` produces for an event, what `correlate`
stores and alerts for a match, which rules alert, and the config that routes alerts to a sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

pytest.importorskip("sigma", reason="pySigma comes with the dev extra")

from prometheus_client import CollectorRegistry

from forwarder import logs
from forwarder.cli import main
from forwarder.config import Config, ConfigError, parse
from forwarder.metrics import DetectionMetrics
from forwarder.pipeline.alerts import Correlator, Detector, load_ruleset
from tests.unit.test_detections import EXAMPLES, _bodies, _normalize

NOW = 1_796_000_000.0


def _config(**detections: Any) -> Config:
    return parse({"detections": {"enabled": True, **detections}})


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _example(path: str) -> list[dict[str, Any]]:
    return [_normalize(body) for body in _bodies(EXAMPLES / path)]


def test_an_alerting_rule_gives_an_alert_keyed_by_its_id() -> None:
    registry = CollectorRegistry()
    config = _config()
    detector = Detector(config, load_ruleset(config), DetectionMetrics(registry))
    (event,) = _example("aha_integration_tampering/positive/webhook_hook_url_changed.json")
    alerts, matches = detector.evaluate(orjson.dumps(event), NOW)
    assert matches == []
    ((key, value, rule),) = alerts
    alert = json.loads(value)
    assert rule == "aha_integration_tampering" and key == alert["event"]["id"].encode()
    assert alert["event"]["kind"] == "alert"
    assert _value(registry, "aha_siem_detections_events_total") == 1
    assert _value(registry, "aha_siem_detections_matches_total", rule=rule) == 1


def test_an_informational_rule_only_feeds_its_correlation() -> None:
    registry = CollectorRegistry()
    config = _config()
    detector = Detector(config, load_ruleset(config), DetectionMetrics(registry))
    (event,) = _example("aha_record_destroyed/positive/feature_destroyed.json")
    alerts, matches = detector.evaluate(orjson.dumps(event), NOW)
    assert alerts == []
    ((key, value, rule),) = matches
    assert rule == "aha_destroy_burst_by_user"
    assert json.loads(key) == ["aha_destroy_burst_by_user", event["user"]["email"].lower()]
    assert json.loads(value)["id"] == event["event"]["id"]
    assert _value(registry, "aha_siem_detections_matches_total", rule="aha_record_destroyed") == 1


def test_min_level_and_disabled_rules_silence_alerts() -> None:
    (event,) = _example("aha_user_added_or_removed/positive/account_user_created.json")
    for settings in ({"min_level": "medium"}, {"disabled_rules": ["aha_user_added_or_removed"]}):
        config = _config(**settings)
        detector = Detector(config, load_ruleset(config), DetectionMetrics(CollectorRegistry()))
        assert detector.evaluate(orjson.dumps(event), NOW) == ([], [])
    config = _config(min_level="informational")
    detector = Detector(config, load_ruleset(config), DetectionMetrics(CollectorRegistry()))
    destroyed = _example("aha_record_destroyed/positive/feature_destroyed.json")[0]
    assert len(detector.evaluate(orjson.dumps(destroyed), NOW)[0]) == 1


def test_an_event_that_is_no_json_is_counted_not_raised() -> None:
    registry = CollectorRegistry()
    config = _config()
    detector = Detector(config, load_ruleset(config), DetectionMetrics(registry))
    assert detector.evaluate(b"{not json", NOW) == ([], [])
    assert _value(registry, "aha_siem_detections_errors_total", rule="", reason="decode") == 1


def test_the_correlator_alerts_once_across_a_restart_of_its_table() -> None:
    """20 destroys; the table (bytes in, bytes out) is all that is kept between matches, and
    every match is delivered twice (a redelivery after a crash): one alert."""
    registry = CollectorRegistry()
    config = _config()
    ruleset = load_ruleset(config)
    detector = Detector(config, ruleset, DetectionMetrics(registry))
    events = _example("aha_destroy_burst_by_user/positive/twenty_in_five_minutes.json")
    matches = [m for event in events for m in detector.evaluate(orjson.dumps(event), NOW)[1]]
    table: dict[bytes, bytes] = {}
    alerts = []
    for key, value, _ in [*matches[:10], *matches[:10], *matches[10:], *matches]:
        correlator = Correlator(config, ruleset, DetectionMetrics(CollectorRegistry()))
        stored, alert = correlator.step(value, table.get(key), NOW)
        if alert is not None:
            alerts.append(alert)
        if stored is not None:
            table[key] = stored
    (alert,) = alerts
    doc = json.loads(alert[1])
    assert doc["rule"]["name"] == "aha_destroy_burst_by_user"
    assert sorted(doc["aha"]["alert"]["event_ids"]) == sorted(e["event"]["id"] for e in events)


def test_a_sink_reads_alerts_only_with_detections_enabled() -> None:
    sink = {"type": "file", "name": "alerts", "path": "/tmp/alerts.jsonl", "input": "alerts"}
    config = parse({"detections": {"enabled": True}, "sinks": [sink]})
    assert config.sinks[0].input == "alerts"
    assert parse({"sinks": [{**sink, "input": "events"}]}).sinks[0].input == "events"
    with pytest.raises(ConfigError, match=r"input alerts needs detections\.enabled"):
        parse({"sinks": [sink]})
    with pytest.raises(ConfigError, match="input"):
        parse({"sinks": [{**sink, "input": "raw"}]})


def test_a_worker_with_rules_it_cannot_load_exits_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The commands set up logging onto stderr, which is pytest's capture here and closed after.
    monkeypatch.setattr(logs, "setup", lambda level: None)
    empty = tmp_path / "rules"
    empty.mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"detections": {"enabled": True, "rules_dir": str(empty)}}))
    assert main(["worker", "--config", str(path)]) == 2
    assert f"detections.rules_dir: {empty}: no Sigma rules (*.yml)" in capsys.readouterr().err
    (empty / "kw.yml").write_text(
        "title: kw\nname: kw\nlogsource: {product: aha, service: audit}\n"
        "detection:\n  keywords: [secret]\n  condition: keywords\n"
    )
    assert main(["detections", "run", "--config", str(path)]) == 2
    assert "kw: keyword detections (values without a field) are not supported" in (
        capsys.readouterr().err
    )


def test_the_detections_app_starts_from_the_beginning_unless_told_not_to(tmp_path: Path) -> None:
    from forwarder.pipeline.alerts import create_detections_app

    offsets = {}
    for from_beginning in (True, False):
        config = parse(
            {
                "worker": {"data_dir": str(tmp_path / str(from_beginning))},
                "detections": {"enabled": True, "from_beginning": from_beginning},
            }
        )
        app = create_detections_app(config, CollectorRegistry())
        offsets[from_beginning] = app.conf.consumer_auto_offset_reset
        assert list(app.agents) == ["detect", "correlate"]
        assert list(app.tables) == ["detections-windows"]
    assert offsets == {True: "earliest", False: "latest"}
