"""Config precedence (flag > env > file > default) and config-file checking, on a stand-in command."""
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from runner.cli.options import PositiveFloat
from runner.cli.config import ConfigError, configurable, deployments, read_config


Positive = PositiveFloat  # a custom type the file's values must pass too


def make_command():
    @configurable
    @click.command()
    @click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--rpm", type=Positive())
    @click.option("--burst", "burst_s", type=Positive(), default=1.0)
    @click.option("--max-attempts", type=click.IntRange(1, 100), default=6)
    @click.option("--retry-failed", is_flag=True)
    @click.option("--base-url", envvar="OPENAI_BASE_URL", default="https://api.openai.com/v1")
    def command(output, rpm, burst_s, max_attempts, retry_failed, base_url):
        click.echo(json.dumps({"output": str(output), "rpm": rpm, "burst_s": burst_s,
                               "max_attempts": max_attempts, "retry_failed": retry_failed,
                               "base_url": base_url, "deployments": deployments()}))
    return command


def invoke(args, env=None):
    clean = {"OPENAI_BASE_URL": None, "RUNNER_CONFIG": None}
    return CliRunner().invoke(make_command(), args, env={**clean, **(env or {})})


def values(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No ./runner.toml from wherever the tests run."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config(tmp_path):
    def write(text: str) -> Path:
        path = tmp_path / "conf" / "nightly.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path
    return write


def test_built_in_defaults_apply_without_env_or_file():
    got = values(invoke(["-o", "out.jsonl"]))
    assert got["max_attempts"] == 6 and got["burst_s"] == 1.0 and got["rpm"] is None


def test_file_beats_default(config):
    path = config("max_attempts = 8\nburst = 2.5\nretry_failed = true\n")
    got = values(invoke(["--config", str(path), "-o", "out.jsonl"]))
    assert (got["max_attempts"], got["burst_s"], got["retry_failed"]) == (8, 2.5, True)


def test_env_beats_file(config):
    path = config("max_attempts = 8\nburst = 2.5\n")
    got = values(invoke(["--config", str(path), "-o", "o"],
                        env={"RUNNER_MAX_ATTEMPTS": "9", "RUNNER_BURST": "3"}))
    assert (got["max_attempts"], got["burst_s"]) == (9, 3.0)


def test_flag_beats_env_and_file(config):
    path = config("max_attempts = 8\n")
    got = values(invoke(["--config", str(path), "-o", "o", "--max-attempts", "10"],
                        env={"RUNNER_MAX_ATTEMPTS": "9"}))
    assert got["max_attempts"] == 10


def test_env_vars_are_named_after_the_long_option_not_the_parameter():
    got = values(invoke(["-o", "o"], env={"RUNNER_BURST": "4", "RUNNER_BURST_S": "9"}))
    assert got["burst_s"] == 4.0


def test_an_options_own_env_var_still_works_after_the_runner_one():
    assert values(invoke(["-o", "o"], env={"OPENAI_BASE_URL": "http://a"}))["base_url"] == "http://a"
    got = values(invoke(["-o", "o"], env={"OPENAI_BASE_URL": "http://a", "RUNNER_BASE_URL": "http://b"}))
    assert got["base_url"] == "http://b"


def test_required_option_can_come_from_the_file_relative_to_the_file(config, tmp_path):
    path = config('output = "results/out.jsonl"\n')
    got = values(invoke(["--config", str(path)]))
    assert got["output"] == str(tmp_path / "conf" / "results" / "out.jsonl")


def test_runner_toml_in_the_current_directory_is_read_by_default(tmp_path):
    (tmp_path / "runner.toml").write_text("rpm = 120\n")
    assert values(invoke(["-o", "o"]))["rpm"] == 120.0


def test_config_path_can_come_from_the_environment(config):
    path = config("rpm = 60\n")
    assert values(invoke(["-o", "o"], env={"RUNNER_CONFIG": str(path)}))["rpm"] == 60.0


def test_deployments_table_is_available_to_the_command(config):
    path = config('[deployments]\ngpt-4o-mini = "prod-4o-mini"\n')
    got = values(invoke(["--config", str(path), "-o", "o"]))
    assert got["deployments"] == {"gpt-4o-mini": "prod-4o-mini"}


@pytest.mark.parametrize("text, message", [
    ("max_attempt = 8\n", "unknown key 'max_attempt'; did you mean 'max_attempts'?"),
    ("burst_s = 2\n", "unknown key 'burst_s'; did you mean 'burst'?"),
    ("help = true\n", "unknown key 'help'"),
    ('max_attempts = "8"\n', "max_attempts must be an integer, got '8'"),
    ("max_attempts = 8.5\n", "max_attempts must be an integer"),
    ("max_attempts = true\n", "max_attempts must be an integer"),
    ("max_attempts = 0\n", "max_attempts = 0: 0 is not in the range 1<=x<=100"),
    ("rpm = -5.0\n", "rpm = -5.0: '-5.0' must be a positive number"),
    ('rpm = "fast"\n', "rpm = 'fast'"),
    ('retry_failed = "yes"\n', "retry_failed must be true or false"),
    ("output = 3\n", "output must be a string"),
    ("[deployments]\ngpt-4o = 1\n", "deployments.gpt-4o must be a non-empty string"),
    ("deployments = 1\n", "deployments must be a table"),
    ("rpm = \n", "not valid TOML"),
])
def test_bad_config_files_are_rejected_naming_file_and_key(config, text, message):
    path = config(text)
    with pytest.raises(ConfigError) as e:
        read_config(path, make_command())
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)


def test_a_bad_config_file_is_a_usage_error_exit_2(config):
    path = config("max_attempt = 8\n")
    result = invoke(["--config", str(path), "-o", "o"])
    assert result.exit_code == 2
    assert "unknown key 'max_attempt'" in result.output and str(path) in result.output


def test_a_missing_config_file_named_explicitly_is_a_usage_error(tmp_path):
    result = invoke(["--config", str(tmp_path / "nope.toml"), "-o", "o"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_a_command_sharing_the_run_config_takes_only_its_own_keys(config):
    run = make_command()

    @configurable(schema=run)
    @click.command()
    @click.option("--output", "-o", required=True)
    def status(output):
        click.echo(output)

    path = config('max_attempts = 8\noutput = "out.jsonl"\n')
    result = CliRunner().invoke(status, ["--config", str(path)], env={"RUNNER_CONFIG": None})
    assert result.exit_code == 0 and result.output.strip() == str(path.parent / "out.jsonl")
    result = CliRunner().invoke(status, ["-o", "x"], env={"RUNNER_OUTPUT": "from-env"})
    assert result.output.strip() == "x"
    path.write_text("max_attempt = 8\n")
    result = CliRunner().invoke(status, ["--config", str(path), "-o", "x"])
    assert result.exit_code == 2 and "unknown key 'max_attempt'" in result.output


def test_the_example_config_is_valid_for_the_real_run_command():
    from runner.cli.main import run_command
    example = Path(__file__).resolve().parent.parent / "examples" / "runner.toml"
    loaded = read_config(example, run_command)
    assert loaded.defaults["max_attempts"] == 8


def test_precedence_on_the_real_run_command(tmp_path, monkeypatch):
    """flag > RUNNER_* > runner.toml > default, as `runner run` itself resolves them."""
    from runner.cli import build
    from runner.cli import main as cli

    captured = {}
    monkeypatch.setattr(build, "execute_live", lambda config, **kw: captured.setdefault("config", config) and 0)
    (tmp_path / "in.jsonl").write_text("")
    (tmp_path / "runner.toml").write_text(
        'output = "from-file.jsonl"\nrpm = 100\ntpm = 5000\nmax_attempts = 3\nconcurrency = 7\n'
        '[deployments]\ngpt-4o = "dep-4o"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-000000")
    monkeypatch.setenv("RUNNER_TPM", "6000")
    monkeypatch.setenv("RUNNER_MAX_ATTEMPTS", "4")
    result = CliRunner().invoke(cli.main, ["run", "in.jsonl", "--max-attempts", "5"])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert config.output.resolve() == tmp_path / "from-file.jsonl"  # file (relative to the file)
    assert (config.rpm, config.tpm) == (100, 6000)                 # file; env beats file
    assert config.dispatch.max_attempts == 5                       # flag beats env and file
    assert config.dispatch.concurrency == 7 and config.burst_s == 1.0  # file; default


@pytest.mark.parametrize("how, expected", [
    ((), "auto"),
    (("--budget-scope", "key"), "key"),
    (("file",), "key"),
    (("env",), "model"),
])
def test_budget_scope_comes_from_the_flag_the_environment_or_the_file(tmp_path, monkeypatch, how,
                                                                     expected):
    from runner.cli import build
    from runner.cli import main as cli

    captured = {}
    monkeypatch.setattr(build, "execute_live", lambda config, **kw: captured.setdefault("config", config) and 0)
    (tmp_path / "in.jsonl").write_text("")
    if "file" in how:
        (tmp_path / "runner.toml").write_text('budget_scope = "key"\n')
    if "env" in how:
        monkeypatch.setenv("RUNNER_BUDGET_SCOPE", "model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-000000")
    flags = [flag for flag in how if flag.startswith("--") or flag == "key"]
    result = CliRunner().invoke(cli.main, ["run", "in.jsonl", "-o", "out.jsonl", *flags])
    assert result.exit_code == 0, result.output
    assert captured["config"].budget_scope == expected


def test_a_bad_budget_scope_in_the_file_is_a_usage_error_naming_it(tmp_path, monkeypatch):
    from runner.cli import main as cli

    (tmp_path / "in.jsonl").write_text("")
    (tmp_path / "runner.toml").write_text('budget_scope = "org"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["run", "in.jsonl", "-o", "out.jsonl"])
    assert result.exit_code == 2
    assert "budget_scope" in result.output


def test_retry_codes_in_the_config_file_may_be_a_list_or_a_comma_separated_string(tmp_path):
    from runner.cli.main import run_command
    for text in ('retry_codes = ["not_found", "invalid_request"]\n',
                 'retry_codes = "not_found,invalid_request"\n'):
        path = tmp_path / "runner.toml"
        path.write_text(text)
        loaded = read_config(path, run_command)
        assert loaded.defaults["retry_codes"] == "not_found,invalid_request"
