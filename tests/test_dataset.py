"""From a dataset and back: `runner export` (jobs/export.py's rows, runner/dataset.py's streaming
join) and the round trip through the real CLI on the simulator: a CSV (quoted commas, newlines
inside fields, non-ASCII text) -> prepare -> run -> export --data -> the same rows in the same
order, each with its own answer; Parquet the same."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from jobs.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, IMAGES_GENERATIONS, MODERATIONS, RESPONSES
from jobs.export import answer_of, expand, export_row
from jobs.results import error_record, fingerprint, success_record
from runner.dataset import DatasetError, ResultIndex, export
from runner.files.tables import TableWriter, read_rows
from runner.simulator.answers import chat_prompt, completion_text, embedding_vector
from runner.simulator.completions import answer_for
from runner.simulator.config import SimConfig
from runner.simulator.server import run_in_thread

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
PRINT = fingerprint(CHAT, BODY)


def ok(cid, body, printed=PRINT):
    return success_record(cid, body, record_id="r", request_id=None, fingerprint=printed)


def chat_answer(*texts, reason="stop"):
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": t},
                         "finish_reason": reason} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


# -- one row per job: jobs/export.py ----------------------------------------------------------

@pytest.mark.parametrize("record, status, code", [
    (None, "pending", None),
    (ok("a", chat_answer("hi")), "done", None),
    (error_record("a", "server_error", "boom", record_id="r", status=500), "failed", "server_error"),
    (error_record("a", "invalid_request", "bad", record_id="r", status=400), "failed", "invalid_request"),
    (ok("a", chat_answer("hi"), printed="0" * 32), "changed", None),
    (ok("a", chat_answer("hi"), printed=None), "done", None),  # no fingerprint: taken as this job's
    # a transient failure of an older version is no answer: the job just runs again (as run
    # and status see it), not "changed"
    (error_record("a", "server_error", "boom", record_id="r", status=500, fingerprint="0" * 32),
     "failed", "server_error"),
])
def test_each_job_gets_its_status_from_its_final_line(record, status, code):
    row = export_row("a", CHAT, PRINT, record)
    assert (row["status"], row["error_code"]) == (status, code)
    assert (row["answer"] is not None) == (status == "done")  # a changed job's old answer is not given


def test_a_done_row_has_the_answer_finish_reason_and_token_counts():
    row = export_row("a", CHAT, PRINT, ok("a", chat_answer("hi", reason="length")))
    assert row == {"custom_id": "a", "status": "done", "answer": "hi", "finish_reason": "length",
                   "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                   "error_code": None, "error_message": None}


def test_answers_take_the_shape_a_table_wants_for_every_endpoint():
    assert answer_of(CHAT, chat_answer("a", "b")) == (["a", "b"], ["stop", "stop"])  # n > 1
    completions = {"choices": [{"index": 1, "text": "y", "finish_reason": "stop"},
                               {"index": 0, "text": "x", "finish_reason": "length"}]}
    assert answer_of(COMPLETIONS, completions) == (["x", "y"], ["length", "stop"])
    vector = embedding_vector("e")
    assert answer_of(EMBEDDINGS, answer_for(EMBEDDINGS, {"model": "m", "input": "e"}))[0] == \
        pytest.approx(vector)
    b64 = answer_for(EMBEDDINGS, {"model": "m", "input": "e", "encoding_format": "base64"})
    assert answer_of(EMBEDDINGS, b64)[0] == pytest.approx(vector, abs=1e-6)
    moderation = {"results": [{"flagged": False, "category_scores": {"hate": 0.1}}]}
    assert answer_of(MODERATIONS, moderation) == ({"hate": 0.1}, None)
    response = {"object": "response", "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "output": [{"type": "message", "content": [{"type": "output_text", "text": "cut"}]}]}
    assert answer_of(RESPONSES, response) == ("cut", "max_output_tokens")
    images = {"data": [{"file": "out.images/a-0.png"}, {"file": "out.images/a-1.png"}]}
    assert answer_of(IMAGES_GENERATIONS, images, lambda f: "../" + f)[0] == [
        "../out.images/a-0.png", "../out.images/a-1.png"]


@pytest.mark.parametrize("answer, columns", [
    ('{"label": "pos", "score": 0.9}', {"label": "pos", "score": 0.9}),
    ({"hate": 0.1}, {"hate": 0.1}),
    ("plain text", None), ("[1, 2]", None), (None, None), ([0.1, 0.2], None),
])
def test_only_json_object_answers_expand_into_columns(answer, columns):
    assert expand(answer) == columns


# -- the result index -------------------------------------------------------------------------

def test_the_result_index_keeps_each_ids_last_line_and_never_a_duplicate_note(tmp_path):
    path = tmp_path / "out.jsonl"
    lines = [error_record("a", "server_error", "1", record_id="r"), ok("a", chat_answer("2")),
             error_record("a", "duplicate_custom_id", "dup", record_id="r"),
             ok("b", chat_answer("3"))]
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines) + b'{"custom_id": "c", "resp')
    with ResultIndex(path) as index:
        assert index.get("a")["response"]["body"]["choices"][0]["message"]["content"] == "2"
        assert index.get("b") is not None and index.get("c") is None  # a torn last line
    with ResultIndex(tmp_path / "missing.jsonl") as index:
        assert index.get("a") is None


# -- export, in process -----------------------------------------------------------------------

def write_jobs(path, ids):
    path.write_bytes(b"".join(orjson.dumps({"custom_id": c, "method": "POST", "url": CHAT,
                                            "body": BODY}) + b"\n" for c in ids))
    return path


def test_export_follows_the_job_files_order_and_skips_its_bad_and_repeated_lines(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["z", "a", "m"])
    with open(jobs, "ab") as f:
        f.write(b"not json\n" + orjson.dumps({"custom_id": "a", "url": CHAT, "body": BODY}) + b"\n")
    results = tmp_path / "out.jsonl"
    results.write_bytes(b"".join(orjson.dumps(ok(c, chat_answer(f"answer {c}"))) + b"\n"
                                 for c in ["m", "a"]))
    done = export(jobs, results, tmp_path / "t.jsonl")
    rows = [orjson.loads(line) for line in (tmp_path / "t.jsonl").read_bytes().splitlines()]
    assert [(r["custom_id"], r["status"], r["answer"]) for r in rows] == [
        ("z", "pending", None), ("a", "done", "answer a"), ("m", "done", "answer m")]
    assert done.statuses == {"done": 2, "failed": 0, "pending": 1, "changed": 0}


def test_data_columns_come_first_and_runner_columns_they_share_are_prefixed(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"status": "vip", "text": "a"}\n{"status": "", "text": "b"}\n')
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["1", "2"])
    export(jobs, tmp_path / "none.jsonl", tmp_path / "t.csv", data=data)
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["status", "text", "custom_id", "runner_status"]
    assert [(r["status"], r["runner_status"]) for r in rows] == [("vip", "pending"), ("", "pending")]


def test_a_job_missing_from_data_stops_export_and_writes_nothing(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"k": "a"}\n{"k": "b"}\n')
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["b", "a"])  # not DATA's order
    with pytest.raises(DatasetError, match="job 'a'.*order"):
        export(jobs, tmp_path / "none.jsonl", tmp_path / "t.csv", data=data, id_column="k")
    assert sorted(tmp_path.iterdir()) == sorted([data, jobs])  # no table, no temporary file


def test_expanded_json_answers_become_columns(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["1", "2"])
    results = tmp_path / "out.jsonl"
    results.write_bytes(orjson.dumps(ok("1", chat_answer('{"label": "pos", "status": "x"}')))
                        + b"\n")
    export(jobs, results, tmp_path / "t.jsonl", expand_json=True)
    first, second = [orjson.loads(x) for x in (tmp_path / "t.jsonl").read_bytes().splitlines()]
    assert first["label"] == "pos" and first["answer.status"] == "x" and first["status"] == "done"
    assert second["label"] is None and second["status"] == "pending"


def test_export_never_writes_over_the_jobs_or_results(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["1"])
    results = tmp_path / "out.jsonl"
    results.write_bytes(orjson.dumps(ok("1", chat_answer("x"))) + b"\n")
    other_results = tmp_path / "other.jsonl"
    other_results.write_bytes(results.read_bytes())
    for target in (jobs, results):
        with pytest.raises(DatasetError, match="input"):
            export(jobs, results, target)
    with pytest.raises(DatasetError, match="holds results"):
        export(jobs, results, other_results, force=True)
    other_jobs = write_jobs(tmp_path / "other-jobs.jsonl", ["1"])
    with pytest.raises(DatasetError, match="job file"):
        export(jobs, results, other_jobs)


# -- the round trip through the CLI on the simulator ------------------------------------------

def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def dataset_rows(n):
    texts = ["Hello, world", "two\nlines", "Grüße, 你好, «ça va?»", 'say "hi"', "  padded  "]
    return [{"key": f"k{i:04d}", "text": f"{texts[i % len(texts)]} #{i}", "n": str(i)}
            for i in range(n)]


@pytest.fixture(scope="module")
def simulator():
    with run_in_thread(SimConfig(rpm=100_000, tpm=10_000_000, fault_rate=0.05, seed=3)) as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_table_goes_through_prepare_run_and_export_and_comes_back_in_order_with_its_answers(
        tmp_path, simulator, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    rows = dataset_rows(300)
    data = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        with open(data, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        with TableWriter(data) as writer:
            for row in rows:
                writer.write(row)
            writer.commit()
    jobs, results, table = tmp_path / "jobs.jsonl", tmp_path / "results.jsonl", tmp_path / f"answers.{fmt}"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "PYTHONPATH": str(ROOT)}
    out = cli("prepare", data, "-o", jobs, "-t", "Answer: {{ text }}", "--system", "Row {{ n }}",
              "-m", "gpt-4o-mini", "--set", "max_tokens=8", env=env)
    assert out.returncode == 0, out.stderr
    out = cli("run", jobs, "-o", results, "--base-url", simulator, "--no-progress",
              "--max-attempts", "10", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    out = cli("export", jobs, "--output", results, "-o", table, "--data", data, env=env)
    assert out.returncode == 0, out.stderr
    back = [row for _, row in read_rows(table)]
    assert [{k: r[k] for k in ("key", "text", "n")} for r in back] == rows
    for row, original in zip(back, rows):
        prompt = chat_prompt([{"content": f"Row {original['n']}"},
                              {"content": f"Answer: {original['text']}"}])
        assert row["answer"] == completion_text(prompt, 0)
        assert row["status"] == "done" and row["custom_id"] == str(int(original["n"]) + 1)
        assert int(row["total_tokens"]) > 0 and row["finish_reason"] == "stop"
