import pytest
from click.testing import CliRunner

from driftwatch.cli import main
from driftwatch.config import load_settings
from driftwatch.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "dw.yaml"
    path.write_text(text)
    return path


def problems(exc: ConfigError) -> dict[str, str]:
    return {p.path: f"{p.message} | {p.fix}" for p in exc.problems}


def test_defaults_load_without_file():
    s = load_settings(None, env={})
    assert s.kafka.topics.inference == "driftwatch.inference.v1"
    assert s.kafka.consumer.heartbeat_interval_ms * 3 <= s.kafka.consumer.session_timeout_ms


def test_env_overrides_file(tmp_path):
    path = write(tmp_path, "kafka:\n  bootstrap_servers: [a:1]\n  consumer:\n    group_id: from-file\n")
    s = load_settings(path, env={
        "DRIFTWATCH__KAFKA__BOOTSTRAP_SERVERS": "b:9092, c:9093",
        "DRIFTWATCH__KAFKA__CONSUMER__MAX_POLL_RECORDS": "77",
        "UNRELATED": "x",
    })
    assert s.kafka.bootstrap_servers == ["b:9092", "c:9093"]
    assert s.kafka.consumer.max_poll_records == 77
    assert s.kafka.consumer.group_id == "from-file"


def test_every_problem_is_reported_with_path_and_fix(tmp_path):
    path = write(tmp_path, """
kafka:
  bootstrap_server: [a:1]
  consumer:
    session_timeout_ms: 6000
    heartbeat_interval_ms: 3000
    max_poll_records: zero
logging:
  format: xml
""")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    got = problems(info.value)
    assert "did you mean 'bootstrap_servers'" in got["kafka.bootstrap_server"]
    assert "whole number" in got["kafka.consumer.max_poll_records"]
    assert "'text'" in got["logging.format"] and "'json'" in got["logging.format"]


def test_cross_field_rule_names_the_field_and_the_fix(tmp_path):
    path = write(tmp_path, "kafka:\n  consumer:\n    session_timeout_ms: 6000\n    heartbeat_interval_ms: 3000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "set it to at most 2000" in problems(info.value)["kafka.consumer.heartbeat_interval_ms"]


def test_env_problem_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"DRIFTWATCH__HTTP__PORT": "http"})
    assert "DRIFTWATCH__HTTP__PORT" in problems(info.value)["http.port"]


def test_sasl_requires_credentials_and_bad_servers_are_named():
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"DRIFTWATCH__KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
                                 "DRIFTWATCH__KAFKA__BOOTSTRAP_SERVERS": "kafka-without-port"})
    got = problems(info.value)
    assert {"kafka.security.sasl_mechanism", "kafka.security.sasl_username", "kafka.security.sasl_password",
            "kafka.bootstrap_servers"} <= set(got)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError, match="line 3"):
        load_settings(write(tmp_path, "kafka:\n  - [unclosed\n"), env={})


def test_config_check_prints_resolved_config_without_secrets(tmp_path, monkeypatch):
    path = write(tmp_path, """
kafka:
  security: {protocol: SASL_SSL, sasl_mechanism: PLAIN, sasl_username: svc, sasl_password: hunter2-secret}
""")
    monkeypatch.setenv("DRIFTWATCH__KAFKA__CLIENT_ID", "from-env")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "hunter2-secret" not in result.output
    assert "sasl_password: '**********'" in result.output
    assert "client_id: from-env" in result.output


def test_config_check_exits_2_listing_problems(tmp_path):
    path = write(tmp_path, "kafka:\n  partitions: 0\n  topics: {inference: a, feedback: a}\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "kafka.partitions" in result.output and "greater than or equal to 1" in result.output


def test_secret_never_in_repr_or_dump():
    s = load_settings(None, env={"DRIFTWATCH__KAFKA__SECURITY__PROTOCOL": "SASL_PLAINTEXT",
                                 "DRIFTWATCH__KAFKA__SECURITY__SASL_MECHANISM": "PLAIN",
                                 "DRIFTWATCH__KAFKA__SECURITY__SASL_USERNAME": "u",
                                 "DRIFTWATCH__KAFKA__SECURITY__SASL_PASSWORD": "pw-123456"})
    assert "pw-123456" not in repr(s) and "pw-123456" not in str(s.redacted())


def test_passwords_inside_urls_are_masked_where_settings_are_printed(tmp_path):
    from click.testing import CliRunner

    from driftwatch.cli import main
    from driftwatch.config import mask_url

    env = {"DRIFTWATCH__STORE__URL": "postgresql://dw:hunter2-pw@db:5432/dw?sslmode=require&password=hunter3-pw",
           "DRIFTWATCH__GATEWAY__UPSTREAMS": "http://u:hunter4-pw@vllm:8000"}
    s = load_settings(None, env=env)
    dumped = str(s.redacted())
    assert "hunter" not in dumped and "postgresql://dw:***@db:5432/dw?sslmode=require&password=***" in dumped
    assert mask_url("http://vllm:8000/v1") == "http://vllm:8000/v1"  # nothing to mask: unchanged
    assert mask_url("postgresql://u:pa/ss@h/db") == "postgresql://u:***@h/db"
    assert mask_url("postgresql://u:p@ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    path = tmp_path / "c.yaml"
    path.write_text("kafka: {bootstrap_servers: ['127.0.0.1:9092']}\n")
    out = CliRunner().invoke(main, ["config", "check", str(path)], env=env)
    assert "hunter" not in out.output and "dw:***@db" in out.output


def test_security_settings_reach_the_kafka_client(tmp_path):
    from driftwatch.ingest.kafka import client_kwargs

    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("-----BEGIN-----\n")
    s = load_settings(None, env={
        "DRIFTWATCH__KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
        "DRIFTWATCH__KAFKA__SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
        "DRIFTWATCH__KAFKA__SECURITY__SASL_USERNAME": "svc",
        "DRIFTWATCH__KAFKA__SECURITY__SASL_PASSWORD": "pw",
        "DRIFTWATCH__KAFKA__SECURITY__SSL_CAFILE": str(ca),
        "DRIFTWATCH__KAFKA__SECURITY__SSL_CERTFILE": str(cert),
        "DRIFTWATCH__KAFKA__SECURITY__SSL_KEYFILE": str(key),
        "DRIFTWATCH__KAFKA__SECURITY__SSL_CHECK_HOSTNAME": "false",
    })
    kw = client_kwargs(s.kafka)
    assert kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("SCRAM-SHA-512", "svc", "pw")
    assert (kw["ssl_cafile"], kw["ssl_certfile"], kw["ssl_keyfile"]) == (str(ca), str(cert), str(key))
    assert kw["ssl_check_hostname"] is False
    plain = client_kwargs(load_settings(None, env={}).kafka)
    assert plain["security_protocol"] == "PLAINTEXT" and "sasl_plain_password" not in plain


def test_config_check_ends_with_a_verdict_and_quiet_prints_only_it(tmp_path):
    from click.testing import CliRunner

    from driftwatch.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("kafka: {bootstrap_servers: ['10.0.0.5:9092']}\n")
    full = CliRunner().invoke(main, ["config", "check", str(path)])
    quiet = CliRunner().invoke(main, ["config", "check", "--quiet", str(path)])
    assert full.exit_code == quiet.exit_code == 0
    assert full.output.splitlines()[-1] == quiet.output.strip() and quiet.output.startswith(f"ok: {path} is valid")
    assert "kafka 10.0.0.5:9092" in quiet.output and len(full.output.splitlines()) > 50


def test_a_bad_value_from_the_environment_is_reported_as_the_environment_s_not_the_file_s(tmp_path):
    """A new user's run: `error: dw.yaml: ... control.token: ...` for a token set in the environment."""
    from driftwatch.config import load_settings
    from driftwatch.errors import ConfigError

    path = tmp_path / "dw.yaml"
    path.write_text("http: {port: 9108}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={"DRIFTWATCH__CONTROL__TOKEN": "short"})
    assert "from environment variable DRIFTWATCH__CONTROL__TOKEN" in str(exc.value)
    assert "the values below came from the environment" in str(exc.value)
    path.write_text("control: {token: short}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert "environment" not in str(exc.value)
