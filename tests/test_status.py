"""`runner status`: done / failed (by code, permanent vs transient) / pending, read-only, exit codes."""
import orjson
import pytest

from jobs.results import DUPLICATE
from runner.report.render import print_report
from runner.report.status import StatusError, status, status_table
from tests.conftest import error_record, success_record


def job(cid):
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4o-mini",
                                  "messages": [{"role": "user", "content": cid}]}})


def ok(cid):
    return orjson.dumps(success_record(cid, {"choices": []}, request_id="req"))


def failed(cid, code, status_code=None):
    return orjson.dumps(error_record(cid, code, "m", status=status_code))


def write(path, rows, tail=b""):
    path.write_bytes(b"".join(r + b"\n" for r in rows) + tail)
    return path


@pytest.fixture
def files(tmp_path):
    def make(input_rows, output_rows=None, tail=b""):
        inp = write(tmp_path / "in.jsonl", input_rows)
        out = tmp_path / "out.jsonl"
        if output_rows is not None:
            write(out, output_rows, tail)
        return str(inp), out
    return make


def test_each_job_is_done_failed_permanent_failed_transient_or_pending(files):
    inp, out = files([job(c) for c in "abcdef"], [
        ok("a"),
        failed("b", "invalid_request", 400),
        failed("c", "rate_limit_exceeded", 429),
        failed("d", "server_error", 500), ok("d"),          # the last line wins
        failed("e", "timeout"), failed("e", "not_found", 404),
    ])
    s = status(inp, out)
    assert (s.jobs, s.done, s.pending) == (6, 2, 1)
    assert dict(s.permanent) == {"invalid_request": 1, "not_found": 1}
    assert dict(s.transient) == {"rate_limit_exceeded": 1}
    assert s.remaining == 2
    assert s.exit_code() == 3


def test_failures_written_by_the_hosted_batch_api_are_counted_by_status(files):
    inp, out = files([job("a"), job("b")], [
        orjson.dumps({"custom_id": "a", "response": {"status_code": 400, "body": {}}, "error": None}),
        orjson.dumps({"custom_id": "b", "response": {"status_code": 503, "body": {}}, "error": None}),
    ])
    s = status(inp, out)
    assert dict(s.permanent) == {"http_400": 1} and dict(s.transient) == {"http_503": 1}


def test_results_for_ids_not_in_the_input_are_counted_separately(files):
    inp, out = files([job("a")], [ok("a"), ok("zz1"), failed("zz2", "invalid_request")])
    s = status(inp, out)
    assert (s.done, s.unknown_ids) == (1, 2)
    assert sorted(s.first_unknown_ids) == ["zz1", "zz2"]


def test_duplicate_notes_in_the_output_are_not_results(files):
    inp, out = files([job("a"), job("a")], [failed("a", DUPLICATE), ok("a")])
    s = status(inp, out)
    assert (s.jobs, s.done, s.duplicates.count, s.unknown_ids) == (1, 1, 1, 0)
    assert s.duplicates.first[0].line == 2


def test_status_never_writes_the_output_even_with_a_torn_last_line(files):
    inp, out = files([job("a"), job("b")], [ok("a")], tail=ok("b")[:20])
    before = out.read_bytes()
    s = status(inp, out)
    assert out.read_bytes() == before
    assert s.scan.torn_bytes == 20
    assert (s.done, s.pending) == (1, 1)  # the torn line's job counts as pending, as a run sees it


def test_output_lines_that_are_not_results_are_reported_by_number(files):
    inp, out = files([job("a")], [b"garbage", ok("a"), b"[1]"])
    s = status(inp, out)
    assert (s.scan.lines, s.scan.bad_lines, s.scan.first_bad_lines) == (3, 2, [1, 3])
    assert s.done == 1


def test_a_missing_output_means_everything_is_pending(files):
    inp, out = files([job("a"), job("b")])
    s = status(inp, out)
    assert (s.pending, s.scan.exists, s.exit_code()) == (2, False, 3)


@pytest.mark.parametrize("input_rows, output_rows, code", [
    ([job("a")], [ok("a")], 0),                                        # all done
    ([job("a"), job("b")], [ok("a"), failed("b", "invalid_request")], 1),  # only permanent left
    ([job("a"), b"junk"], [ok("a")], 1),                               # bad input line
    ([job("a"), job("b")], [failed("a", "invalid_request")], 3),       # pending beats failed
    ([job("a")], [failed("a", "insufficient_quota", 429)], 3),         # transient: rerun resumes
])
def test_exit_code_says_what_a_cron_script_should_do(files, input_rows, output_rows, code):
    inp, out = files(input_rows, output_rows)
    assert status(inp, out).exit_code() == code


def test_unreadable_files_raise_status_error(tmp_path, files):
    with pytest.raises(StatusError, match="cannot read input"):
        status(str(tmp_path / "nope.jsonl"), tmp_path / "out.jsonl")
    inp, _ = files([job("a")])
    with pytest.raises(StatusError, match="is a directory"):
        status(inp, tmp_path)


def test_json_and_table_report_the_same_counts(files, capsys):
    inp, out = files([job("a"), job("b"), job("c"), b"junk"],
                     [ok("a"), failed("b", "content_filter"), ok("x")], tail=b'{"cust')
    s = status(inp, out)
    data = orjson.loads(orjson.dumps(s.to_json()))
    assert data["done"] == 1 and data["pending"] == 1 and data["exit_code"] == 3
    assert data["failed_permanent"] == {"total": 1, "by_code": {"content_filter": 1}}
    assert data["unknown_ids"] == {"count": 1, "first": ["x"]}
    assert data["output_file"]["torn_bytes"] == len(b'{"cust')
    print_report(status_table(s))
    text = capsys.readouterr().out
    assert "content_filter 1" in text and f"{inp}:4:" in text and "exit 3" in text


def test_into_a_file_a_report_keeps_each_flagged_line_on_one_line_whatever_the_path(tmp_path,
                                                                                    capsys):
    deep = tmp_path / ("a-long-folder-name-" * 6) / ("another-one-" * 6)
    deep.mkdir(parents=True)
    inp = write(deep / "in.jsonl", [job("a"), b"junk"])
    print_report(status_table(status(str(inp), deep / "out.jsonl")))
    lines = capsys.readouterr().out.splitlines()
    assert any(f"{inp}:2:" in line for line in lines), lines


def test_status_over_the_shards_of_one_input_counts_each_job_once(tmp_path):
    from runner.report.status import status as status_of

    source = tmp_path / "in.jsonl"
    source.write_text("".join(
        f'{{"custom_id": "j{i}", "method": "POST", "url": "/v1/chat/completions", '
        f'"body": {{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "q"}}]}}}}\n'
        for i in range(4)))
    ok = '{{"id": "r", "custom_id": "{0}", "response": {{"status_code": 200, "request_id": "x", "body": {{}}}}, "error": null}}\n'
    (tmp_path / "a.jsonl").write_text(ok.format("j0") + ok.format("j1"))
    (tmp_path / "b.jsonl").write_text(ok.format("j2"))
    result = status_of(str(source), [tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert (result.jobs, result.done, result.pending, result.unknown_ids) == (4, 3, 1, 0)
    assert result.output.endswith("a.jsonl, " + str(tmp_path / "b.jsonl"))


def test_the_status_command_reads_a_glob_of_shard_outputs(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from runner.cli.main import main

    source = tmp_path / "in.jsonl"
    source.write_text("".join(
        f'{{"custom_id": "j{i}", "method": "POST", "url": "/v1/chat/completions", '
        f'"body": {{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "q"}}]}}}}\n'
        for i in range(3)))
    ok = '{{"id": "r", "custom_id": "{0}", "response": {{"status_code": 200, "request_id": "x", "body": {{}}}}, "error": null}}\n'
    for k in range(3):
        (tmp_path / f"in.shard-{k}.jsonl").write_text(ok.format(f"j{k}"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["status", "in.jsonl", "-o", "in.shard-*.jsonl", "--json"])
    assert result.exit_code == 0, result.output
    assert '"done": 3' in result.output
    missing = CliRunner().invoke(main, ["status", "in.jsonl", "-o", "nothing-*.jsonl"])
    assert missing.exit_code == 2 and "no output matches" in missing.output


def test_over_several_outputs_a_job_done_in_any_is_done_as_merge_keeps_it(tmp_path):
    from runner.report.status import status as status_of

    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"custom_id": "j0", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}]}}\n')
    ok = '{"id": "r", "custom_id": "j0", "response": {"status_code": 200, "request_id": "x", "body": {}}, "error": null}\n'
    failed = ('{"id": "r2", "custom_id": "j0", "response": null, '
              '"error": {"code": "server_error", "message": "boom"}}\n')
    (tmp_path / "new.jsonl").write_text(ok)
    (tmp_path / "old.jsonl").write_text(failed)  # read after new.jsonl
    result = status_of(str(source), [tmp_path / "new.jsonl", tmp_path / "old.jsonl"])
    assert (result.done, result.failed_permanent, sum(result.transient.values())) == (1, 0, 0)
