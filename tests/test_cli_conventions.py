"""What every verb does the same way (docs/cli.md): --version, help with defaults, exit status by kind of
error, where the configuration comes from and environment overrides, ``-`` for stdin/stdout, Kafka
settings from the config, TensorFlow kept quiet."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from helpers import DATA, REPO, imported

from netsiam.cli_args import HelpFormatter, build_parser, iter_parsers
from netsiam.config import Config, KafkaConfig
from netsiam.errors import EXIT_CONFIG, EXIT_DATA, EXIT_RUNTIME, EXIT_USAGE, ConfigError
from netsiam.kafka_io import client_kwargs, consumer_kwargs
from netsiam.quiet import filter_noise
from netsiam.settings import env_overrides, resolve_config


def netsiam(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "netsiam", *args], input=stdin, capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO)


# -- --version and help ---------------------------------------------------------------------------------
def test_version() -> None:
    r = netsiam("--version")
    assert r.returncode == 0 and r.stdout.decode().strip() == f"netsiam {importlib.metadata.version('netsiam')}"


def test_every_flag_has_help_and_shows_its_default() -> None:
    missing, no_default = [], []
    for cmd, parser in iter_parsers(build_parser()):
        assert parser.formatter_class is HelpFormatter, cmd
        fmt = HelpFormatter(cmd)
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction | argparse._HelpAction | argparse._VersionAction):
                continue
            name = f"{cmd} {'/'.join(a.option_strings) or a.dest}"
            if not (a.help or "").strip():
                missing.append(name)
            shown = fmt._get_help_string(a) or ""
            stated = a.default not in (None, False, argparse.SUPPRESS) and not (isinstance(a.default, list | str)
                                                                                 and not a.default)
            if a.option_strings and stated and "default" not in shown:
                no_default.append(name)
    assert not missing, f"flags without help: {missing}"
    assert not no_default, f"defaults not shown: {no_default}"
    text = netsiam("simulate", "--help").stdout.decode()
    assert "(default: 8)" in text and "(default: 0)" in text  # --sources, --seed (0 is a default too)


def test_every_documented_invocation_names_a_verb_and_flags_it_has() -> None:
    parsers = dict(iter_parsers(build_parser()))
    text = (REPO / "docs" / "cli.md").read_text()
    block = text[text.index("## Invocations"):text.index("## Exit status")]
    lines = [ln.strip() for ln in block.splitlines() if ln.startswith("    netsiam ")]
    assert len(lines) >= 20
    for line in lines:
        tokens = line.translate(str.maketrans("[]()|", "     ")).split()
        cmd = max((c for c in parsers if (line + " ").startswith(c + " ")), key=len)
        actions = parsers[cmd]._actions
        assert not any(isinstance(a, argparse._SubParsersAction) for a in actions), f"{line!r}: no such verb"
        options = {o for a in actions for o in a.option_strings}
        unknown = [t for t in tokens if t.startswith("-") and t not in options]
        assert not unknown, f"{line!r}: {cmd!r} has no {unknown}"
        word = line[len(cmd):].split()[0] if line[len(cmd):].split() else ""
        choices = [c for a in actions if not a.option_strings and a.choices for c in a.choices]
        assert not choices or word in choices, f"{line!r}: {word!r} is not one of {choices}"


def test_the_flag_reference_in_cli_md_is_the_parsers_own() -> None:
    from netsiam.cli_docs import BEGIN, END, flags_markdown

    text = (REPO / "docs" / "cli.md").read_text()
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    assert block.strip() == flags_markdown().strip(), "docs/cli.md's flags are stale: python -m netsiam.cli_docs"
    for cmd, parser in iter_parsers(build_parser()):
        for a in parser._actions:
            if a.option_strings and a.dest not in ("help", "config", "version") and not any(
                    isinstance(x, argparse._SubParsersAction) for x in parser._actions):
                assert f"`{a.option_strings[-1]}`" in block, (cmd, a.option_strings)


# -- exit status ----------------------------------------------------------------------------------------
def test_exit_status_says_which_kind_of_error(tmp_path: Path) -> None:
    assert netsiam("simulate", "--no-such-flag").returncode == EXIT_USAGE
    assert netsiam("replay", str(DATA / "sipp_b_labels.csv"), "--speed", "0").returncode == EXIT_USAGE
    r = netsiam("replay", str(tmp_path / "none.jsonl"), "--max")
    assert r.returncode == EXIT_DATA and b"none.jsonl" in r.stderr
    # no trace at all: refused before any broker is tried (nothing listens on port 1)
    r = netsiam("replay", str(DATA / "sipp_b_stat.csv"), "--max", "--bootstrap", "127.0.0.1:1")
    assert r.returncode == EXIT_DATA and b"sipp_b_stat.csv:1: not a trace record" in r.stderr, r.stderr
    assert b"import sipp" in r.stderr
    (tmp_path / "blank.jsonl").write_bytes(b"\n \n")
    r = netsiam("replay", str(tmp_path / "blank.jsonl"), "--max", "--bootstrap", "127.0.0.1:1")
    assert r.returncode == EXIT_DATA and b"empty trace" in r.stderr
    bad = tmp_path / "c.yaml"
    bad.write_text("detector:\n  silent_after_s: -1\n")
    r = netsiam("replay", str(tmp_path / "none.jsonl"), "--max", "--config", str(bad))
    assert r.returncode == EXIT_CONFIG and b"detector.silent_after_s" in r.stderr
    r = netsiam("replay", str(tmp_path / "none.jsonl"), "--max", env={"NETSIAM_WINDOW__LENGTH": "many"})
    assert r.returncode == EXIT_CONFIG and b"window.length" in r.stderr
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b'{"source": "a", "ts": 1795384000, "metrics": {}}\n')
    r = netsiam("replay", str(trace), "--max", "--bootstrap", "127.0.0.1:1")  # nothing listens on port 1
    assert r.returncode == EXIT_RUNTIME and b"cannot reach the broker" in r.stderr, r.stderr
    assert b"Traceback" not in r.stderr
    # one line, not kafka-python's ERROR for each of its ~60 reconnection attempts first
    lines = [ln for ln in r.stderr.decode().splitlines() if ln.strip() and "INFO netsiam.cli: config:" not in ln]
    assert len(lines) == 1 and lines[0].startswith("netsiam replay: error: cannot reach the broker"), lines


def test_an_excluded_label_no_interval_names_is_warned_of(tmp_path: Path) -> None:
    """A typo in --exclude-label would exclude nothing: said before the data is read (here it is not a trace)."""
    r = netsiam("train", "--data", str(DATA / "sipp_b_stat.csv"), "--labels", str(DATA / "sipp_b_labels.csv"),
                "-o", str(tmp_path / "m"), "--exclude-label", "blokced", "--exclude-label", "blocked")
    err = r.stderr.decode()
    assert "warning: --exclude-label blokced: no label interval names it" in err, err
    assert "--exclude-label blocked:" not in err and r.returncode == EXIT_DATA, err


def test_a_bad_value_is_a_usage_error_that_names_the_flag_before_any_work(tmp_path: Path) -> None:
    """What a typo gives: exit 2 and the flag, not an internal error after loading a model or embedding."""
    out = str(tmp_path / "x")
    cases = [
        (("broker", "--port", "70000"), "--port"),
        (("detect", "--metrics-port", "-1", "--bootstrap", "127.0.0.1:1"), "--metrics-port"),
        (("simulate", "--minutes", "nan", "-o", out, "--labels", out + ".csv"), "--minutes"),
        (("simulate", "--min-load", "50", "--max-load", "10", "-o", out, "--labels", out + ".csv"), "--min-load"),
        (("simulate", "--min-load", "600", "-o", out, "--labels", out + ".csv"), "(its default)"),
        (("simulate", "--minutes", "1", "-o", out, "--labels", out), "same file"),
        (("simulate", "--minutes", "1", "-o", "-", "--labels", "-"), "both stdout"),
        (("import", "sipp", str(DATA / "sipp_b_stat.csv"), "--source", "x" * 257, "-o", out), "--source"),
        (("import", "sipp", str(DATA / "sipp_b_stat.csv"), "--source", "", "-o", out), "--source"),
        (("import", "sipp", "-", "-", "--source", "s", "-o", out), "more than once"),
        (("collect", "sipp", str(DATA / "sipp_b_stat.csv"), "--source", "x" * 300, "-o", out), "--source"),
        (("plot", "dashboard", "--range", "abc", "-o", out + ".png", "--prometheus", "http://127.0.0.1:1"), "--range"),
        (("plot", "dashboard", "-o", out + ".png", "--prometheus", "notaurl"), "--prometheus"),
        (("plot", "embedding", "--data", str(DATA / "sipp_b_stat.csv"), "-o", out + ".txt"), "not an image"),
        (("evaluate", "--data", str(DATA / "sipp_b_stat.csv"), "--labels", str(DATA / "sipp_b_labels.csv"),
          "--plots", str(DATA / "sipp_b_labels.csv")), "--plots"),
        (("simulate", "--sources", "0", "-o", out, "--labels", out + ".csv"), "--sources"),
        (("simulate", "--minutes", "0", "-o", out, "--labels", out + ".csv"), "--minutes"),
        (("replay", str(DATA / "sipp_b_stat.csv"), "--speed", "-2"), "--speed"),
        (("train", "--epochs", "0", "--data", out, "--labels", out, "-o", out), "--epochs"),
        (("dump", "--from", "yesterday", "-o", out), "bad time 'yesterday'"),
        (("replay", str(DATA / "sipp_b_stat.csv"), "--bootstrap", "127.0.0.1:abc"), "--bootstrap"),
        (("dump", "--bootstrap", "", "-o", out), "--bootstrap"),
        (("simulate", "--seed", "-5", "-o", out, "--labels", out + ".csv"), "--seed"),
        (("simulate", "--min-load", "-1", "-o", out, "--labels", out + ".csv"), "--min-load"),
        (("train", "--seed", "-1", "--data", out, "--labels", out, "-o", out), "--seed"),
        (("train", "--data", str(DATA / "sipp_b_stat.csv"), "--labels", str(DATA / "sipp_b_labels.csv"), "-o", "-"),
         "-o -"),
        (("train", "--data", str(DATA / "sipp_b_stat.csv"), "--labels", str(DATA / "sipp_b_labels.csv"), "-o", out,
          "--exclude-label", "normal"), "--exclude-label normal"),
        (("train", "--data", str(DATA / "sipp_b_stat.csv"), "--labels", str(DATA / "sipp_b_labels.csv"), "-o", out,
          "--logdir", str(DATA / "sipp_b_labels.csv")), "--logdir"),
        (("collect", "sipp", str(DATA / "sipp_b_stat.csv"), "--source", "c", "--state", "none", "--bootstrap",
          "127.0.0.1:1", "--buffer", "0"), "--buffer"),
    ]
    served = tmp_path / "served"   # a taught model: training over it would orphan its kept versions
    (served / "versions").mkdir(parents=True)
    cases.append((("train", "--data", str(DATA / "sipp_b_stat.csv"), "--labels", str(DATA / "sipp_b_labels.csv"),
                   "-o", str(served)), "kept versions"))
    for args, needle in cases:
        r = netsiam(*args)
        err = r.stderr.decode()
        line = next((ln for ln in err.splitlines() if "error:" in ln), "")   # not the usage line's flags
        assert r.returncode == EXIT_USAGE and needle in line and "internal error" not in err, (args, err)
    assert not Path(out).exists() and not Path(out + ".csv").exists()


def test_a_metrics_port_in_use_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        model = tmp_path / "served"
        assert netsiam("model", "copy", str(model)).returncode == 0      # learn writes: not the shipped model
        runs = [netsiam(verb, "--metrics-port", str(port), "--bootstrap", "127.0.0.1:1", *extra)
                for verb, extra in (("detect", ()), ("learn", ("--model", str(model))))]
    for r in runs:
        err = r.stderr.decode()
        assert r.returncode == EXIT_RUNTIME and f"cannot serve metrics on 127.0.0.1:{port}" in err, err
        assert "Traceback" not in err


# -- configuration ----------------------------------------------------------------------------------------
def test_config_lookup_order(tmp_path: Path) -> None:
    flag, via_env, system = (tmp_path / n for n in ("flag.yaml", "env.yaml", "system.yaml"))
    for p, port in ((flag, 1), (via_env, 2), (system, 3)):
        p.write_text(yaml.safe_dump({"metrics": {"port": port}}))
    env = {"NETSIAM_CONFIG": str(via_env)}
    assert resolve_config(str(flag), env, system)[0].metrics.port == 1
    cfg, choice = resolve_config(None, env, system)
    assert cfg.metrics.port == 2 and choice.path == via_env and "NETSIAM_CONFIG" in choice.describe()
    cfg, choice = resolve_config(None, {}, system)
    assert cfg.metrics.port == 3 and choice.path == system
    cfg, choice = resolve_config(None, {}, tmp_path / "absent.yaml")
    assert cfg == Config() and choice.path is None and "built-in defaults" in choice.describe()
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(None, {"NETSIAM_CONFIG": str(tmp_path / "typo.yaml")}, system)


def test_the_choice_is_logged_at_info(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    r = netsiam("replay", str(tmp_path / "none.jsonl"), "--max", env={"NETSIAM_CONFIG": str(cfg),
                                                                      "NETSIAM_KAFKA__SASL_PASSWORD": "hunter2"})
    err = r.stderr.decode()
    line = next(ln for ln in err.splitlines() if "config:" in ln)
    assert "INFO" in line and str(cfg) in line and "$NETSIAM_CONFIG" in line and "kafka.sasl_password" in line
    assert "hunter2" not in err  # which keys the environment set, never their values


def test_environment_overrides_single_keys_with_their_types(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr3t\n")
    env = {"NETSIAM_KAFKA__SASL_PASSWORD": "12345",                  # a str that looks like an int stays a str
           "NETSIAM_DETECTOR__DEBOUNCE__RAISE_K": "1",
           "NETSIAM_DETECTOR__SILENT_AFTER_S": "45",                 # int accepted for a float
           "netsiam_kafka__ssl_check_hostname": "false",             # any case
           "NETSIAM_FEATURES": "[offered_rel, success_rel]",          # a top-level key: its name alone
           "NETSIAM_DEBUG": "1",                                      # not an override, nor is NETSIAM_CONFIG
           "NETSIAM_KAFKA__SSL_PASSWORD_FILE": str(secret)}          # from a file (systemd credentials)
    assert env_overrides(env) == {"detector.debounce.raise_k": 1, "detector.silent_after_s": 45,
                                  "kafka.sasl_password": "12345", "kafka.ssl_check_hostname": False,
                                  "kafka.ssl_password": "s3cr3t", "features": ["offered_rel", "success_rel"]}
    cfg, choice = resolve_config(None, env, tmp_path / "absent.yaml")
    assert cfg.kafka.sasl_password == "12345" and cfg.kafka.ssl_password == "s3cr3t"
    assert cfg.detector.debounce.raise_k == 1 and cfg.detector.debounce.raise_n == 2  # the rest stays
    assert cfg.detector.silent_after_s == 45.0 and cfg.kafka.ssl_check_hostname is False
    assert cfg.features == ("offered_rel", "success_rel")
    assert "s3cr3t" not in repr(cfg) and cfg.to_dict()["kafka"]["ssl_password"] == "***"
    # over a file: the file's other keys stay
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"kafka": {"group_id": "g1", "client_id": "c1"}}))
    cfg, _ = resolve_config(str(f), {"NETSIAM_KAFKA__GROUP_ID": "g2"})
    assert (cfg.kafka.group_id, cfg.kafka.client_id) == ("g2", "c1")


@pytest.mark.parametrize(("env", "message"), [
    ({"NETSIAM_KAFKA__SASL_PASWORD": "x"}, "NETSIAM_KAFKA__SASL_PASWORD: unknown key kafka.sasl_pasword"),
    ({"NETSIAM_KAFKA__": "x"}, "empty key part"),
    ({"NETSIAM_WINDOW": "5"}, "NETSIAM_WINDOW: window is a section"),
    ({"NETSIAM_FEATURES": "abc"}, "features: expected a list"),
    ({"NETSIAM_KAFKA__TOPICS": "x"}, "is a section"),
    ({"NETSIAM_WINDOW__LENGTH__X": "1"}, "window.length has no sub-keys"),
    ({"NETSIAM_WINDOW__LENGTH": "2.5"}, "window.length: expected int"),
    ({"NETSIAM_KAFKA__AUTO_OFFSET_RESET": "newest"}, "kafka.auto_offset_reset"),
    ({"NETSIAM_KAFKA__SASL_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read /nonexistent/pw"),
])
def test_bad_overrides_name_the_variable_or_key(env: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_config(None, env, tmp_path / "absent.yaml")


# -- Kafka settings ----------------------------------------------------------------------------------------
def test_every_kafka_python_security_option_is_reachable_from_config() -> None:
    from kafka import KafkaConsumer, KafkaProducer

    wanted = {k for k in {**KafkaConsumer.DEFAULT_CONFIG, **KafkaProducer.DEFAULT_CONFIG}
              if k.startswith(("ssl_", "sasl_", "security_"))} - {"ssl_context"}  # built from the ssl_* keys
    k = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_username="u", sasl_password="p",
                    sasl_kerberos_name="client", sasl_kerberos_service_name="kafka2", sasl_kerberos_domain_name="d",
                    sasl_oauth_token_provider="helpers:StaticTokenProvider", ssl_cafile="ca", ssl_certfile="c",
                    ssl_keyfile="k", ssl_password="kp", ssl_crlfile="crl", ssl_ciphers="HIGH", ssl_check_hostname=False)
    kw = client_kwargs(k)
    assert wanted <= set(kw), f"not passed through: {wanted - set(kw)}"
    assert kw["sasl_oauth_token_provider"].token() == "t0k3n" and kw["ssl_check_hostname"] is False
    assert consumer_kwargs(KafkaConfig(auto_offset_reset="latest"), None, "g")["auto_offset_reset"] == "latest"
    with pytest.raises(ConfigError, match="cannot import"):
        client_kwargs(KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                                  sasl_oauth_token_provider="no_such_module:x"))


@pytest.mark.parametrize("verb", ["replay", "dump"])
def test_kafka_verbs_take_the_broker_and_security_from_config(verb: str, broker: Any, topics: Any,
                                                              tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": broker.bootstrap,
                                             "topics": {"samples": topics.samples, "faults": topics.faults}}}))
    lines = imported([DATA / "sipp_c_stat.csv"])
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    r = netsiam("replay", str(trace), "--max", "--quiet", "--config", str(cfg))  # no --bootstrap
    assert r.returncode == 0, r.stderr
    if verb == "dump":
        r = netsiam("dump", "--config", str(cfg), "-o", "-")
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.splitlines()) == sorted(lines)


# -- - for stdin and stdout ----------------------------------------------------------------------------------
def test_dash_reads_stdin_and_writes_stdout() -> None:
    stat = (DATA / "sipp_c_stat.csv").read_bytes()
    r = netsiam("import", "sipp", "-", "--source", "s", "-o", "-", stdin=stat)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == imported([DATA / "sipp_c_stat.csv"])  # data alone on stdout
    assert b"import sipp:" in r.stderr                                  # the summary on stderr
    # /dev/null as an output is written into, not replaced by a regular file (an atomic rename would)
    r = netsiam("simulate", "--sources", "1", "--minutes", "1", "-o", "-", "--labels", os.devnull, "--quiet")
    assert r.returncode == 0 and [orjson.loads(x)["source"] for x in r.stdout.splitlines()] == ["sbc-1"] * 60
    assert Path(os.devnull).is_char_device()


@pytest.mark.slow
def test_evaluate_reads_the_trace_from_stdin_and_writes_json_to_stdout(tmp_path: Path) -> None:
    """A real verb through TensorFlow: stdout is the report alone; stderr has the summary and no
    TensorFlow start-up lines (what make demo shows)."""
    lines = imported([DATA / "sipp_b_stat.csv"], "sbc-b")
    r = netsiam("evaluate", "--data", "-", "--labels", str(DATA / "sipp_b_labels.csv"), "--json", "-",
                stdin=b"\n".join(lines) + b"\n", env={"TF_CPP_MIN_LOG_LEVEL": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    report = orjson.loads(r.stdout)
    assert report["episodes"] and "window_accuracy" in report
    err = r.stderr.decode().splitlines()
    assert filter_noise(err) == [ln for ln in err if ln.strip()], "TensorFlow start-up lines in the output"
    assert not [ln for ln in err if "absl" in ln or "cuda" in ln.lower() or "oneDNN" in ln], err


def test_quiet_drops_tensorflow_startup_lines_only() -> None:
    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1796133985.118229    5863 cudart_stub.cc:31] Could not find cuda drivers on your machine",
             "E0000 00:00:1796133991.630456    5863 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the",
             "netsiam evaluate: error: model artifact not found: x", ""]
    assert filter_noise(lines) == ["netsiam evaluate: error: model artifact not found: x"]
    r = subprocess.run([sys.executable, "-c", "from netsiam import quiet; quiet.install(); import tensorflow as tf; "
                        "import sys; print(len(tf.config.list_physical_devices('GPU')) >= 0, file=sys.stderr)"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": ""})
    assert r.returncode == 0 and r.stderr.strip() == "True", r.stderr
