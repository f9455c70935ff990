"""The Kafka settings as flags of `arledger` (before the command) and as environment variables.

A flag is written into the environment under the variable it overrides, so
every `Settings.from_env()` of the process and of its children sees it; a
setting that cannot work stops the command with a message naming the flag and
the variable. No broker: only the mapping, the checks and the help.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from arledger.cli import build_parser, main
from arledger.settings import (
    KAFKA_OPTIONS,
    PASSWORD_FILE_VARIABLE,
    PASSWORD_VARIABLE,
    SettingsError,
    Settings,
    apply_flags,
    kafka_problems,
)

OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ARLEDGER_* variable; whatever `main` writes into os.environ is undone after the test."""
    for name in {*(option.variable for option in KAFKA_OPTIONS), PASSWORD_VARIABLE,
                 *(name for name in os.environ if name.startswith("ARLEDGER_"))}:
        monkeypatch.setenv(name, "")  # recorded, so the teardown restores it (or removes it)
        monkeypatch.delenv(name)


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, str]:
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "client.pem", "key": tmp_path / "client.key",
             "password": tmp_path / "password"}
    for path in files.values():
        path.write_text("placeholder\n")
    files["password"].write_text("s3cret with space \n")
    return {name: str(path) for name, path in files.items()}


def flag_values(*argv: str) -> dict[str, str | None]:
    args = build_parser().parse_args([*argv, "status"])
    return {option.variable: getattr(args, option.variable) for option in KAFKA_OPTIONS}


def full_flags(tls: dict[str, str]) -> list[str]:
    return ["--bootstrap-servers", "k1:9093,k2:9093", "--security-protocol", "SASL_SSL",
            "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "arledger", "--sasl-password-file",
            tls["password"], "--ssl-cafile", tls["ca"], "--ssl-certfile", tls["cert"], "--ssl-keyfile", tls["key"],
            "--client-id", "arledger-prod", "--topic-prefix", "finance.", "--partitions", "12",
            "--replication-factor", "3", "--min-insync-replicas", "2"]


# -- Flags → environment ---------------------------------------------------------------------------


def test_every_flag_lands_in_its_environment_variable(tls: dict[str, str]) -> None:
    environ: dict[str, str] = {}

    apply_flags(flag_values(*full_flags(tls)), environ)

    assert environ == {
        "ARLEDGER_KAFKA": "k1:9093,k2:9093", "ARLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "ARLEDGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "ARLEDGER_KAFKA_SASL_USERNAME": "arledger",
        PASSWORD_FILE_VARIABLE: tls["password"], "ARLEDGER_KAFKA_SSL_CAFILE": tls["ca"],
        "ARLEDGER_KAFKA_SSL_CERTFILE": tls["cert"], "ARLEDGER_KAFKA_SSL_KEYFILE": tls["key"],
        "ARLEDGER_CLIENT_ID": "arledger-prod", "ARLEDGER_TOPIC_PREFIX": "finance.", "ARLEDGER_PARTITIONS": "12",
        "ARLEDGER_REPLICATION_FACTOR": "3", "ARLEDGER_MIN_INSYNC_REPLICAS": "2",
    }
    assert kafka_problems(environ) == []


def test_a_flag_overrides_its_variable_and_leaves_the_others_alone() -> None:
    environ = {"ARLEDGER_TOPIC_PREFIX": "from-env.", "ARLEDGER_CLIENT_ID": "env-client", "ARLEDGER_HOME": "/h"}

    apply_flags(flag_values("--topic-prefix", "from-flag."), environ)

    assert environ == {"ARLEDGER_TOPIC_PREFIX": "from-flag.", "ARLEDGER_CLIENT_ID": "env-client",
                       "ARLEDGER_HOME": "/h"}


def test_an_empty_flag_still_overrides_the_variable() -> None:
    environ = {"ARLEDGER_TOPIC_PREFIX": "from-env."}

    apply_flags(flag_values("--topic-prefix", ""), environ)

    assert environ["ARLEDGER_TOPIC_PREFIX"] == ""


def test_the_password_file_flag_replaces_a_password_from_the_environment(tls: dict[str, str]) -> None:
    environ = {PASSWORD_VARIABLE: "old password"}

    apply_flags(flag_values("--sasl-password-file", tls["password"]), environ)

    assert environ == {PASSWORD_FILE_VARIABLE: tls["password"]}  # the password itself is not in the environment


def test_file_flags_become_absolute_paths_for_child_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ: dict[str, str] = {}

    apply_flags(flag_values("--ssl-cafile", "ca.pem", "--sasl-password-file", "pw"), environ)

    assert environ["ARLEDGER_KAFKA_SSL_CAFILE"] == str(tmp_path / "ca.pem")
    assert environ[PASSWORD_FILE_VARIABLE] == str(tmp_path / "pw")


def test_protocol_and_mechanism_are_accepted_in_any_case() -> None:
    values = flag_values("--security-protocol", "sasl_ssl", "--sasl-mechanism", "scram-sha-512")

    assert values["ARLEDGER_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert values["ARLEDGER_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


@pytest.mark.parametrize(("flag", "value"), [("--security-protocol", "TLS"), ("--sasl-mechanism", "GSSAPI")])
def test_an_unknown_protocol_or_mechanism_is_an_argument_error(
        flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([flag, value, "status"])

    assert exit_.value.code == 2
    assert re.search(rf"arledger: error: argument {flag}: invalid choice: '{value}'", capsys.readouterr().err)


def test_a_kafka_flag_after_the_command_says_where_it_belongs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--bootstrap-servers", "k1:9093", "ingest"])

    assert exit_.value.code == 2
    assert ("arledger: error: --bootstrap-servers: Kafka options go before the command "
            "(arledger --bootstrap-servers ... COMMAND ...)") in capsys.readouterr().err


def test_other_unknown_arguments_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["status", "--no-such-option"])

    assert exit_.value.code == 2
    assert "arledger: error: unrecognized arguments: --no-such-option" in capsys.readouterr().err


# -- The environment, wherever it came from: Settings ------------------------------------------


def test_settings_read_the_password_from_its_file_and_never_show_it(
        clean_environ: None, tls: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    apply_flags(flag_values(*full_flags(tls)), os.environ)

    settings = Settings.from_env()

    assert settings.sasl_password == "s3cret with space "  # the first line, without its line ending
    assert "s3cret" not in repr(settings)
    assert (settings.kafka_bootstrap, settings.security_protocol, settings.sasl_mechanism,
            settings.sasl_username) == ("k1:9093,k2:9093", "SASL_SSL", "SCRAM-SHA-512", "arledger")
    assert (settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile) == (tls["ca"], tls["cert"], tls["key"])
    assert (settings.client_id("ingest"), settings.topic("ar.inbound")) == ("arledger-prod-ingest",
                                                                           "finance.ar.inbound")
    assert (settings.partitions, settings.replication_factor, settings.min_insync_replicas) == (12, 3, 2)
    assert settings.kafka_security()["sasl_plain_password"] == "s3cret with space "


def test_the_password_variable_still_works(clean_environ: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARLEDGER_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ARLEDGER_KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv(PASSWORD_VARIABLE, "p")

    settings = Settings.from_env()

    assert (settings.sasl_mechanism, settings.sasl_password) == (None, "p")
    assert settings.kafka_security()["sasl_mechanism"] == "PLAIN"  # PLAIN when SASL names no mechanism


def test_settings_from_a_broken_environment_raise_a_settings_error(
        clean_environ: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARLEDGER_REPLICATION_FACTOR", "three")

    with pytest.raises(SettingsError, match=r"--replication-factor \(ARLEDGER_REPLICATION_FACTOR\)"):
        Settings.from_env()


# -- What cannot work, and what the message says ---------------------------------------------------


def problem_cases(tls: dict[str, str]) -> dict[str, tuple[dict[str, str], str]]:
    sasl = {"ARLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "ARLEDGER_KAFKA_SASL_USERNAME": "u",
            PASSWORD_FILE_VARIABLE: tls["password"]}
    return {
        "unknown protocol": ({"ARLEDGER_KAFKA_SECURITY_PROTOCOL": "TLS"},
                             r"--security-protocol \(ARLEDGER_KAFKA_SECURITY_PROTOCOL\): unknown 'TLS'"),
        "unknown mechanism": ({**sasl, "ARLEDGER_KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
                              r"--sasl-mechanism .*unknown 'OAUTHBEARER'; choose PLAIN, SCRAM-SHA-256"),
        "mechanism without user": ({"ARLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                    "ARLEDGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                    PASSWORD_VARIABLE: "p"},
                                   r"needs a user: --sasl-username \(ARLEDGER_KAFKA_SASL_USERNAME\)"),
        "mechanism without password": ({"ARLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                        "ARLEDGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                        "ARLEDGER_KAFKA_SASL_USERNAME": "u"},
                                       r"needs a password: --sasl-password-file .* or ARLEDGER_KAFKA_SASL_PASSWORD"),
        "password twice": ({**sasl, PASSWORD_VARIABLE: "p"}, r"password is given twice"),
        "SASL settings without a SASL protocol": (
            {"ARLEDGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "ARLEDGER_KAFKA_SASL_USERNAME": "u"},
            r"--sasl-mechanism .*, --sasl-username .* are used only with --security-protocol .* SASL_SSL or "
            r"SASL_PLAINTEXT, not PLAINTEXT"),
        "missing password file": ({**sasl, PASSWORD_FILE_VARIABLE: tls["password"] + ".missing"},
                                  r"--sasl-password-file .*: cannot read .*password\.missing: No such file"),
        "empty password file": ({**sasl, PASSWORD_FILE_VARIABLE: tls["ca"] + ".empty"},
                                r"ca\.pem\.empty is empty; its first line is the password"),
        "missing CA file": ({**sasl, "ARLEDGER_KAFKA_SSL_CAFILE": tls["ca"] + ".missing"},
                            r"--ssl-cafile \(ARLEDGER_KAFKA_SSL_CAFILE\): no such file: .*ca\.pem\.missing"),
        "missing key file": ({**sasl, "ARLEDGER_KAFKA_SSL_CERTFILE": tls["cert"],
                              "ARLEDGER_KAFKA_SSL_KEYFILE": tls["key"] + ".missing"},
                             r"--ssl-keyfile .*: no such file"),
        "key without certificate": ({**sasl, "ARLEDGER_KAFKA_SSL_KEYFILE": tls["key"]},
                                    r"--ssl-keyfile .* without --ssl-certfile"),
        "TLS files without TLS": ({"ARLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                   "ARLEDGER_KAFKA_SASL_USERNAME": "u", PASSWORD_VARIABLE: "p",
                                   "ARLEDGER_KAFKA_SSL_CAFILE": tls["ca"]},
                                  r"--ssl-cafile .* is used only with .* SSL or SASL_SSL, not SASL_PLAINTEXT"),
        "server without port": ({"ARLEDGER_KAFKA": "k1:9093,k2"},
                                r"--bootstrap-servers \(ARLEDGER_KAFKA\): each server is HOST:PORT.*got 'k2'"),
        "port out of range": ({"ARLEDGER_KAFKA": "k1:70000"}, r"got 'k1:70000'"),
        "bad topic prefix": ({"ARLEDGER_TOPIC_PREFIX": "finance/"},
                             r"--topic-prefix .*only letters, digits, '\.', '_' and '-'; got 'finance/'"),
        "topic prefix too long": ({"ARLEDGER_TOPIC_PREFIX": "p" * 240}, r"too long"),
        "zero partitions": ({"ARLEDGER_PARTITIONS": "0"}, r"--partitions .*at least 1, got '0'"),
        "replication factor not a number": ({"ARLEDGER_REPLICATION_FACTOR": "three"},
                                            r"--replication-factor .*got 'three'"),
        "min ISR above replication factor": (
            {"ARLEDGER_REPLICATION_FACTOR": "3", "ARLEDGER_MIN_INSYNC_REPLICAS": "4"},
            r"--min-insync-replicas \(ARLEDGER_MIN_INSYNC_REPLICAS\) 4 is above --replication-factor "
            r"\(ARLEDGER_REPLICATION_FACTOR\) 3: no write could ever be acknowledged"),
        "min ISR above the default replication factor": ({"ARLEDGER_MIN_INSYNC_REPLICAS": "2"}, r"2 is above .* 1"),
    }


@pytest.mark.parametrize("case", sorted(problem_cases({"ca": "", "cert": "", "key": "", "password": ""})))
def test_a_setting_that_cannot_work_is_named_with_its_flag_and_variable(case: str, tls: dict[str, str]) -> None:
    Path(tls["ca"] + ".empty").write_text("")
    environ, expected = problem_cases(tls)[case]

    problems = kafka_problems(environ)

    assert len(problems) == 1, problems
    assert re.search(expected, problems[0]), problems[0]


def test_the_default_environment_and_a_full_production_one_have_no_problems(tls: dict[str, str]) -> None:
    assert kafka_problems({}) == []
    assert kafka_problems({"ARLEDGER_KAFKA": "[::1]:9092", "ARLEDGER_KAFKA_SECURITY_PROTOCOL": "ssl",
                           "ARLEDGER_KAFKA_SSL_CAFILE": tls["ca"], "ARLEDGER_KAFKA_SSL_CERTFILE": tls["cert"]}) == []


def test_the_command_stops_before_it_starts_with_every_problem_listed(
        clean_environ: None, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--sasl-mechanism", "SCRAM-SHA-512", "--min-insync-replicas", "2", "status"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("arledger: error: --sasl-mechanism (ARLEDGER_KAFKA_SASL_MECHANISM) is used only with")
    assert "\n  --min-insync-replicas (ARLEDGER_MIN_INSYNC_REPLICAS) 2 is above" in err
    assert "Traceback" not in err


def test_a_broken_variable_stops_the_command_like_a_broken_flag(
        clean_environ: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ARLEDGER_KAFKA_SECURITY_PROTOCOL", "TLS")

    assert main(["status"]) == 2
    assert capsys.readouterr().err.startswith("arledger: error: --security-protocol "
                                              "(ARLEDGER_KAFKA_SECURITY_PROTOCOL): unknown 'TLS'")


def test_main_puts_the_flags_in_the_environment_of_the_process(
        clean_environ: None, tls: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    main(full_flags(tls))  # no command: prints the help, after the flags were applied

    assert os.environ["ARLEDGER_TOPIC_PREFIX"] == "finance."
    assert Settings.from_env().min_insync_replicas == 2


# -- Documentation -----------------------------------------------------------------------------------


def test_help_explains_every_flag_with_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: argparse would wrap at hyphens
    text = " ".join(build_parser().format_help().split())  # argparse wraps lines anywhere

    for option in KAFKA_OPTIONS:
        assert option.flag in text
        assert f"[{option.variable}; default: {' '.join(option.default.split())}]" in text, option.variable



def test_there_is_no_flag_that_takes_the_password_itself() -> None:
    """A flag's value is visible to every user of the machine in `ps`: the password comes from a file or the
    environment."""
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}

    assert "--sasl-password-file" in flags
    assert not {flag for flag in flags if "password" in flag} - {"--sasl-password-file"}


def test_the_production_table_of_the_operations_doc_lists_every_flag_and_variable() -> None:
    section = OPERATIONS_DOC.read_text().split("## Running in production", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]

    for option in KAFKA_OPTIONS:
        assert any(f"`{option.flag}" in row and f"`{option.variable}`" in row for row in rows), option.flag
    assert any(f"`{PASSWORD_VARIABLE}`" in row for row in rows)
