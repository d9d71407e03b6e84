"""The Redis password stays out of process listings: a --redis URL holding one on the command line
is warned about; the same URL from RUNNER_REDIS_URL is not (that is the way to give it)."""
from click.testing import CliRunner

from runner.cli.main import main



def invoke(tmp_path, *args, env=None):
    (tmp_path / "in.jsonl").write_text("")
    return CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                     "--no-progress", *args],
                              env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                                   **(env or {})})


def test_a_redis_password_on_the_command_line_is_warned_about_and_never_printed(tmp_path):
    result = invoke(tmp_path, "--redis", "redis://:hunter2-secret@127.0.0.1:9/0", "--redis-timeout", "0.2")
    assert "process listings" in result.output and "RUNNER_REDIS_URL" in result.output
    assert "hunter2-secret" not in result.output


def test_a_redis_url_from_the_environment_or_without_a_password_is_not_warned_about(tmp_path):
    quiet = invoke(tmp_path, env={"RUNNER_REDIS_URL": "redis://:hunter2-secret@127.0.0.1:9/0"})
    plain = invoke(tmp_path, "--redis", "redis://127.0.0.1:9/0")
    assert "process listings" not in quiet.output and "process listings" not in plain.output
    assert "hunter2-secret" not in quiet.output
