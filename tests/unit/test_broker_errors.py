"""Operating errors of the local broker, reported clearly; no broker needed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from arledger import cli
from arledger.settings import Settings
from consumers import broker


def _settings(home: Path, port: int = 29_092) -> Settings:
    return Settings(
        home=home,
        broker_port=port,
        kafka_bootstrap=f"127.0.0.1:{port}",
        store_url=f"sqlite:///{home / 'ledger.sqlite'}",
    )


@pytest.fixture
def fake_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "kafka_2.13-4.1.2.jar").write_bytes(b"")
    monkeypatch.setenv(broker.KAFKA_LIB_ENV, str(lib))
    return lib


def test_start_without_jars_tells_to_run_make_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(broker.KAFKA_LIB_ENV, str(tmp_path / "missing-lib"))

    with pytest.raises(broker.BrokerError, match="make jars") as error:
        broker.start(_settings(tmp_path))

    assert str(tmp_path / "missing-lib") in str(error.value)
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_a_jar_folder_without_the_kafka_jar_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()

    with pytest.raises(broker.BrokerError, match="make jars"):
        broker.check_kafka_jars(tmp_path / "lib")


def test_the_jar_folder_defaults_to_deploy_kafka_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(broker.KAFKA_LIB_ENV, raising=False)

    assert broker.kafka_lib_dir().parts[-3:] == ("deploy", "kafka", "lib")


def test_start_without_java_says_java_is_needed(
    tmp_path: Path, fake_jars: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(broker.BrokerError, match="java was not found"):
        broker.start(_settings(tmp_path))


def test_start_on_a_port_taken_by_someone_else_fails_clearly(
    tmp_path: Path, fake_jars: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "find_java", lambda: "java")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        with pytest.raises(broker.BrokerError, match=f"port {port} .* already in use"):
            broker.start(_settings(tmp_path, port))


def test_stop_when_nothing_runs_is_a_no_op(tmp_path: Path) -> None:
    assert broker.stop(_settings(tmp_path)) is False


def test_a_stale_pid_file_means_stopped(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "kafka").mkdir()
    # Our own PID is alive but is not a Kafka broker: it must not count (nor be killed).
    (tmp_path / "kafka" / "broker.pid").write_text(f"{os.getpid()}\n")

    state = broker.status(settings)

    assert not state.running and state.pid is None
    assert broker.stop(settings) is False


def test_server_properties_are_one_node_kraft_on_loopback(tmp_path: Path) -> None:
    properties = broker.server_properties(_settings(tmp_path, 19_092))

    assert "process.roles=broker,controller" in properties
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in properties
    assert "controller.quorum.bootstrap.servers=127.0.0.1:19093" in properties
    assert f"log.dirs={tmp_path / 'kafka' / 'data'}" in properties
    assert "offsets.topic.replication.factor=1" in properties


def test_cli_broker_start_without_jars_exits_non_zero_with_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARLEDGER_HOME", str(tmp_path))
    monkeypatch.setenv("ARLEDGER_BROKER_PORT", "29092")
    monkeypatch.delenv("ARLEDGER_KAFKA", raising=False)
    monkeypatch.setenv(broker.KAFKA_LIB_ENV, str(tmp_path / "missing-lib"))

    exit_code = cli.main(["broker", "start"])

    assert exit_code == 1
    assert "make jars" in capsys.readouterr().err


def test_cli_broker_status_of_a_stopped_broker_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARLEDGER_HOME", str(tmp_path))

    assert cli.main(["broker", "status"]) == 3
    assert "stopped" in capsys.readouterr().out


def test_cli_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["broker", "start", "--help"], ["topics", "ensure", "--help"]):
        with pytest.raises(SystemExit) as leaving:
            cli.main(argv)
        assert leaving.value.code == 0
        assert "example" in capsys.readouterr().out
