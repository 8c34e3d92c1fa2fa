from __future__ import annotations

from pathlib import Path

import pytest

from forwarder import cli
from forwarder.config import ConfigError, hash_token, load, parse
from tests.helpers import EXAMPLE_CONFIG


def test_example_config_loads_with_its_tokens_and_sink() -> None:
    config = load(EXAMPLE_CONFIG, environ={})
    assert [token.name for token in config.ingest.tokens] == ["acme-prod", "acme-sandbox"]
    assert config.ingest.tokens[0].sha256 == hash_token("example-token-acme-prod-replace-me")
    assert config.sinks[0].type == "file"
    assert config.topics.partitions == 8


def test_environment_overrides_nested_keys_list_items_and_types() -> None:
    environ = {
        "AHA_SIEM_INGEST__PORT": "9443",
        "AHA_SIEM_TOPICS__RAW": "custom.raw",
        "AHA_SIEM_SINKS__0__PATH": "/tmp/other.ndjson",
        "AHA_SIEM_WORKER__INCLUDE_ORIGINAL": "true",
        "UNRELATED": "x",
    }
    config = load(EXAMPLE_CONFIG, environ=environ)
    assert config.ingest.port == 9443
    assert config.topics.raw == "custom.raw"
    assert str(config.sinks[0].path) == "/tmp/other.ndjson"
    assert config.worker.include_original is True


def test_kafka_bootstrap_overrides_the_file() -> None:
    config = load(EXAMPLE_CONFIG, environ={"KAFKA_BOOTSTRAP": "broker-1:9092,broker-2:9092"})
    assert config.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"


@pytest.mark.parametrize(
    ("tree", "named_key"),
    [
        ({"ingest": {"port": 70000}}, "ingest.port"),
        ({"ingest": {"prot": 8080}}, "ingest.prot"),
        ({"topics": {"raw": "bad topic!"}}, "topics.raw"),
        ({"ingest": {"tokens": [{"name": "a", "sha256": "not-a-hash"}]}}, "ingest.tokens.0.sha256"),
        ({"sinks": [{"type": "carrier-pigeon", "name": "x"}]}, "sinks.0"),
        ({"sinks": [{"type": "file", "name": "x"}]}, "sinks.0.file.path"),
        ({"ingest": {"produce_timeout_seconds": 6}}, "ingest.produce_timeout_seconds"),
    ],
)
def test_bad_config_names_the_key(tree: dict, named_key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(tree)
    assert named_key in str(raised.value)


def test_duplicate_token_names_are_rejected() -> None:
    token = {"name": "same", "sha256": hash_token("x")}
    with pytest.raises(ConfigError, match="repeated: same"):
        parse({"ingest": {"tokens": [token, token]}})


def test_env_override_of_a_missing_list_item_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="AHA_SIEM_SINKS__9__PATH"):
        load(EXAMPLE_CONFIG, environ={"AHA_SIEM_SINKS__9__PATH": "/x"})


def test_config_check_exits_non_zero_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  port: eighty\n")
    assert cli.main(["config", "check", str(bad)]) == 2
    assert "ingest.port" in capsys.readouterr().err
    assert cli.main(["config", "check", str(EXAMPLE_CONFIG)]) == 0
    assert "ok" in capsys.readouterr().out


def test_config_check_reports_unreadable_and_non_yaml_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("ingest: [unclosed\n")
    assert cli.main(["config", "check", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_token_new_prints_an_entry_whose_hash_matches_the_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import yaml

    assert cli.main(["token", "new", "acme-prod", "--account", "acme"]) == 0
    out = capsys.readouterr().out
    entry = yaml.safe_load(
        "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    )[0]
    token = out.rsplit("stored nowhere): ", 1)[1].strip()
    assert entry == {"name": "acme-prod", "sha256": hash_token(token), "account": "acme"}
    parse({"ingest": {"tokens": [entry]}})


def test_a_kafka_sink_into_the_projects_own_topic_is_refused_naming_the_sink() -> None:
    sink = {"type": "kafka", "name": "loop", "topic": "aha.audit.events"}
    with pytest.raises(ConfigError, match=r"sink 'loop': topic 'aha\.audit\.events'"):
        parse({"sinks": [sink]})
    # On another cluster the same name is someone else's topic.
    parse({"sinks": [{**sink, "bootstrap_servers": "other:9092"}]})


def test_a_max_body_bytes_kafka_cannot_take_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 2 MiB of body plus key and headers is more than the producers' 2 MiB requests.
    path = tmp_path / "config.yaml"
    path.write_text("ingest:\n  max_body_bytes: 2097152\n")
    assert cli.main(["config", "check", str(path)]) != 0
    error = capsys.readouterr().err
    assert "ingest.max_body_bytes" in error and "kafka.max_request_bytes" in error
    # Raising the Kafka side makes it fit.
    path.write_text("ingest:\n  max_body_bytes: 2097152\nkafka:\n  max_request_bytes: 2200000\n")
    assert cli.main(["config", "check", str(path)]) == 0


def test_config_check_loads_the_detection_rules_when_detections_are_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sigma")
    good = tmp_path / "good.yaml"
    good.write_text("detections:\n  enabled: true\n")
    assert cli.main(["config", "check", str(good)]) == 0
    shipped = len(list((Path(__file__).resolve().parents[2] / "detections/sigma").glob("*.yml")))
    assert f"{shipped} detection rule(s)" in capsys.readouterr().out
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "broken.yml").write_text("title: no detection\nlogsource: {product: aha}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"detections:\n  enabled: true\n  rules_dir: {rules}\n")
    assert cli.main(["config", "check", str(bad)]) == 2
    assert "detections.rules_dir" in capsys.readouterr().err
