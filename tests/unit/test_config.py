from pathlib import Path

import pytest

from gridsentry.config import Config, ConfigError, load_config, parse_config


def test_defaults_need_no_file():
    cfg = Config()
    assert cfg.http.host == "127.0.0.1"
    assert cfg.mqtt.qos == 1
    assert cfg.mqtt.client_id  # stable id: a persistent session depends on it
    assert cfg.database_path == Path("data") / "gridsentry.duckdb"


def test_errors_name_key_path_and_line():
    text = """\
http:
  port: 99999
mqtt:
  host: broker.local
  flush_interval_mss: 100
devices:
  - id: DC01
    site: demo
    kind: charger_dc
  - id: DC02
    site: demo
    kind: toaster
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, Path("bad.yaml"))
    issues = {i.path: i for i in err.value.issues}
    assert issues["http.port"].line == 2
    assert "65535" in issues["http.port"].message
    assert issues["mqtt.flush_interval_mss"].line == 5
    assert "unknown key" in issues["mqtt.flush_interval_mss"].message
    assert issues["devices[1].kind"].line == 12
    assert "charger_dc" in issues["devices[1].kind"].message


def test_yaml_syntax_error_has_line():
    with pytest.raises(ConfigError) as err:
        parse_config("http:\n  port: [1, 2\nmqtt: {}\n")
    assert err.value.issues[0].line is not None
    assert "not valid YAML" in err.value.issues[0].message


def test_secrets_from_environment(monkeypatch):
    monkeypatch.setenv("TEST_BROKER_PW", "s3cret")
    cfg = parse_config("mqtt:\n  username: gs\n  password: ${TEST_BROKER_PW}\n")
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)  # SecretStr never prints


def test_missing_environment_variable_is_an_error(monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError) as err:
        parse_config("mqtt:\n  password: ${NOPE_NOT_SET}\n")
    assert err.value.issues[0].path == "mqtt.password"
    assert err.value.issues[0].line == 2
    assert "NOPE_NOT_SET" in err.value.issues[0].message
    cfg = parse_config("mqtt:\n  password: ${NOPE_NOT_SET:-fallback}\n")
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "fallback"


def test_ledger_checks_duplicates_and_parents():
    text = """\
devices:
  - {id: TX01, site: s, kind: box_transformer}
  - {id: AC01, site: s, kind: charger_ac, parent: TX09}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert "TX09" in str(err.value)


def test_data_dir_relative_to_file(tmp_path):
    f = tmp_path / "conf" / "gs.yaml"
    f.parent.mkdir()
    f.write_text("data_dir: ../var\n")
    assert load_config(f).data_dir == (tmp_path / "var").resolve()


def test_example_config_is_valid(monkeypatch):
    monkeypatch.setenv("GRIDSENTRY_MQTT_PASSWORD", "x")
    example = Path(__file__).parents[2] / "deploy" / "gridsentry.example.yaml"
    cfg = load_config(example)
    assert cfg.devices, "the example documents a device ledger"


def test_unreadable_file():
    with pytest.raises(ConfigError) as err:
        load_config(Path("/nonexistent/gridsentry.yaml"))
    assert "cannot read" in str(err.value)


def test_example_config_is_current():
    from gridsentry.config import example_yaml

    example = Path(__file__).parents[2] / "deploy" / "gridsentry.example.yaml"
    assert example.read_text() == example_yaml(), (
        "regenerate: gridsentry config example > deploy/gridsentry.example.yaml"
    )


def test_secrets_from_files(tmp_path: Path):
    from gridsentry.config import parse_config

    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret-from-file\nignored second line\n")
    cfg = parse_config(f"mqtt:\n  password: ${{file:{secret}}}\n")
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "s3cret-from-file"
    with pytest.raises(ConfigError) as err:
        parse_config("mqtt:\n  password: ${file:/nonexistent/pw}\n")
    assert "cannot read the secret file /nonexistent/pw" in str(err.value)
    assert err.value.issues[0].line == 2
