from pathlib import Path

import pytest

from tx_platform.config import Settings, load_settings
from tx_platform.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TXP_KAFKA_BOOTSTRAP", "TXP_POSTGRES_DSN", "TXP_SPARK_MASTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TXP_STATE_DIR", str(tmp_path))  # no stack.env there
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.spark_master == "local[*]"
    assert settings.dsn().startswith("postgresql://txp_pipeline@127.0.0.1:5433/")


def test_environment_beats_stack_env_file_beats_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "stack.env").write_text("TXP_KAFKA_BOOTSTRAP=127.0.0.1:19092\nTXP_LAG_THRESHOLD=7\n")
    monkeypatch.setenv("TXP_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("TXP_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("TXP_LAG_THRESHOLD", "500")
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.lag_threshold == 500


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXP_POSTGRES_DSN", "postgresql://u:hunter2@h:1/d")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert settings.dsn() == "postgresql://u:hunter2@h:1/d"


def test_bad_values_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXP_KAFKA_BOOTSTRAP", "nohostport")
    with pytest.raises(ConfigError, match="host:port"):
        load_settings()
    monkeypatch.setenv("TXP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("TXP_LAG_THRESHOLD", "0")
    with pytest.raises(ConfigError, match="lag_threshold"):
        load_settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.lag_threshold = 2  # type: ignore[misc]


def test_topics_are_the_pipelines_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # a pipeline's spec names its topics (`--pipeline`, `spec.with_topic`): no setting may redirect every pipeline
    monkeypatch.setenv("TXP_TOPIC", "elsewhere")
    assert not {"topic", "dlq_topic"} & set(Settings.model_fields)
    assert "elsewhere" not in repr(load_settings())
