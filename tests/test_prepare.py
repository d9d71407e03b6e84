"""`runner prepare`: a table's rows to a job file. The row -> job rules (jobs/prepare.py) as
tables, the tables read (runner/files/tables.py), and the command's promises: streaming, atomic,
a missing column stops before anything is written, bad keys reported by row, results never
written over."""
import csv
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from jobs.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES
from jobs.prepare import (
    BadRow, Ids, Recipe, TemplateProblem, compile_template, id_text, parse_setting,
    response_format_of,
)
from jobs.reader import read_jobs
from runner.dataset import DatasetError, prepare
from runner.files.keyindex import KeyIndex
from runner.files.tables import TableError, TableWriter, read_rows

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    {"id": "a1", "text": "Hello, world", "lang": "en"},            # a quoted comma
    {"id": "a2", "text": "two\nlines", "lang": "en"},               # a newline inside a field
    {"id": "a3", "text": "Grüße, 你好 \"quoted\"", "lang": "de"},    # non-ASCII, quotes
]


def write_csv(path: Path, rows, bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def recipe(template="Say {{ text }}", **kwargs):
    kwargs.setdefault("model", "gpt-4o-mini")
    return Recipe(template=compile_template(template), **kwargs)


# -- jobs/prepare.py --------------------------------------------------------------------------

@pytest.mark.parametrize("url, field, value", [
    (CHAT, "messages", [{"role": "user", "content": "Say hi"}]),
    (COMPLETIONS, "prompt", "Say hi"),
    (EMBEDDINGS, "input", "Say hi"),
    (MODERATIONS, "input", "Say hi"),
    (RESPONSES, "input", "Say hi"),
])
def test_each_endpoint_gets_the_prompt_in_its_own_field(url, field, value):
    body = recipe(url=url).body({"text": "hi"}, 1)
    assert body[field] == value and body["model"] == "gpt-4o-mini"


def test_a_system_message_comes_first_in_chat_and_is_instructions_in_responses():
    system = compile_template("You speak {{ lang }}")
    chat = recipe(system=system).body({"text": "hi", "lang": "de"}, 1)
    assert chat["messages"] == [{"role": "system", "content": "You speak de"},
                                {"role": "user", "content": "Say hi"}]
    responses = recipe(url=RESPONSES, system=system).body({"text": "hi", "lang": "de"}, 1)
    assert responses["instructions"] == "You speak de"


def test_settings_are_json_typed_and_strings_otherwise():
    assert parse_setting("max_tokens=64") == ("max_tokens", 64)
    assert parse_setting("temperature=0") == ("temperature", 0)
    assert parse_setting("logprobs=true") == ("logprobs", True)
    assert parse_setting('stop=["\\n"]') == ("stop", ["\n"])
    assert parse_setting("user=alice") == ("user", "alice")
    assert parse_setting("seed=") == ("seed", "")
    with pytest.raises(ValueError):
        parse_setting("max_tokens")


def test_a_schema_becomes_a_json_schema_response_format_in_chat_and_text_format_in_responses():
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    wrapped = response_format_of(schema, "sentiment labels!")
    assert wrapped == {"name": "sentiment_labels_", "schema": schema}
    assert response_format_of({"name": "x", "schema": schema, "strict": True}, "f")["strict"]
    chat = recipe(json_schema=wrapped, params={"max_tokens": 5}).body({"text": "t"}, 1)
    assert chat["response_format"] == {"type": "json_schema", "json_schema": wrapped}
    assert chat["max_tokens"] == 5
    responses = recipe(url=RESPONSES, json_schema=wrapped).body({"text": "t"}, 1)
    assert responses["text"] == {"format": {"type": "json_schema", **wrapped}}


@pytest.mark.parametrize("kwargs, complaint", [
    ({"url": EMBEDDINGS, "json_schema": {"name": "x", "schema": {}}}, "chat or responses"),
    ({"url": COMPLETIONS, "system": compile_template("s")}, "system message"),
    ({"params": {"messages": []}}, "cannot set 'messages'"),
    ({"model": None}, "needs a model"),
])
def test_a_recipe_that_cannot_work_is_refused_when_built(kwargs, complaint):
    with pytest.raises(ValueError, match=complaint):
        recipe(**kwargs)


def test_a_missing_column_is_named_with_its_row():
    r = recipe("{{ text }} / {{ colour }}")
    with pytest.raises(TemplateProblem, match="column 'colour', which row 1"):
        r.check_columns(["id", "text"], 1)
    with pytest.raises(TemplateProblem, match="column 'colour', which row 7"):
        r.body({"text": "x"}, 7)


def test_columns_that_are_no_identifier_are_reached_through_row_and_none_renders_empty():
    r = recipe("{{ row['first name'] }}|{{ note }}|")
    assert r.body({"first name": "Ada", "note": None}, 1)["messages"][0]["content"] == "Ada||"


@pytest.mark.parametrize("value, expected", [
    ("a7", "a7"), ("  a7 ", "a7"), (7, "7"), (7.0, "7"), (7.5, "7.5"), ("", None), ("  ", None),
    (None, None), (True, "true"),
])
def test_id_cells_become_custom_ids(value, expected):
    assert id_text(value) == expected


def test_ids_are_row_numbers_by_default_and_bad_keys_are_reported_by_row():
    assert Ids()({"x": 1}, 5) == "5"
    ids = Ids("key")
    assert ids({"key": "k"}, 1) == "k"
    dup = ids({"key": "k"}, 3)
    assert isinstance(dup, BadRow) and dup.row == 3 and "repeats row 1" in dup.reason
    empty = ids({"key": ""}, 4)
    assert isinstance(empty, BadRow) and "empty" in str(empty) and str(empty).startswith("row 4")
    assert isinstance(ids({"other": "x"}, 5), BadRow)


# -- tables -----------------------------------------------------------------------------------

def test_csv_rows_keep_quoted_commas_newlines_and_non_ascii_and_drop_a_bom(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS, bom=True)
    assert [row for _, row in read_rows(path)] == ROWS
    assert [n for n, _ in read_rows(path)] == [1, 2, 3]


def test_jsonl_rows_are_read_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in ROWS) + b"\n[1]\n")
    rows = read_rows(path)
    assert [next(rows)[1] for _ in ROWS] == ROWS
    with pytest.raises(TableError, match="line 5 is not a JSON object"):
        next(rows)


def test_an_unknown_extension_is_refused_naming_the_formats(tmp_path):
    with pytest.raises(TableError, match=r"\.csv, \.jsonl"):
        next(read_rows(tmp_path / "data.xlsx"))


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(TableError, match=r"pip install 'runner\[parquet\]'"):
        next(read_rows(tmp_path / "d.parquet"))
    with pytest.raises(TableError, match="pyarrow"):
        TableWriter(tmp_path / "out.parquet")


def test_parquet_tables_are_read_in_row_order(tmp_path):
    pytest.importorskip("pyarrow")
    with TableWriter(tmp_path / "d.parquet") as writer:
        for row in ROWS:
            writer.write(row)
        writer.commit()
    assert [row for _, row in read_rows(tmp_path / "d.parquet")] == ROWS


def test_the_key_index_spills_to_disk_and_keeps_the_last_value(tmp_path):
    with KeyIndex(memory_keys=10, directory=tmp_path) as index:
        for i in range(100):
            index.put(f"k{i}", i, 2 * i)
        index.put("k3", 300)  # spilled already: the last value wins
        assert index.spilled >= 90 and len(index._recent) < 10
        assert index.get("k3") == (300, 0) and index.get("k99") == (99, 198)
        assert index.get("nope") is None
        assert index.setdefault("k5", 0) == (5, 10)
        assert list(tmp_path.iterdir())
    assert not list(tmp_path.iterdir())  # the file goes with the index


# -- the command ------------------------------------------------------------------------------

@pytest.mark.slow  # starts a process
def test_prepare_writes_a_job_file_run_reads_one_job_per_row_in_order(tmp_path):
    data = write_csv(tmp_path / "d.csv", ROWS)
    out = cli("prepare", data, "-o", tmp_path / "jobs.jsonl", "-t", "Say {{ text }} ({{ lang }})",
              "--system", "Be brief", "-m", "gpt-4o-mini", "--set", "max_tokens=64",
              "--set", "temperature=0", "--id-column", "id")
    assert out.returncode == 0, out.stderr
    jobs = list(read_jobs((tmp_path / "jobs.jsonl").read_bytes().splitlines(), "jobs.jsonl"))
    assert [j.custom_id for j in jobs] == ["a1", "a2", "a3"]
    assert [j.body["messages"][1]["content"] for j in jobs] == [
        f"Say {r['text']} ({r['lang']})" for r in ROWS]
    assert jobs[0].body["max_tokens"] == 64 and jobs[0].body["temperature"] == 0


@pytest.mark.slow  # starts a process
def test_a_template_from_a_file_and_a_missing_column_stops_before_anything_is_written(tmp_path):
    data = write_csv(tmp_path / "d.csv", ROWS)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"custom_id": "old", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}\n')
    before = jobs.read_bytes()
    (tmp_path / "prompt.j2").write_text("Translate {{ text }} into {{ target }}")
    out = cli("prepare", data, "-o", jobs, "-t", "@" + str(tmp_path / "prompt.j2"), "-m", "m")
    assert out.returncode == 2
    assert "'target'" in out.stderr and "row 1" in out.stderr and "nothing was written" in out.stderr
    assert jobs.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_column_missing_from_a_later_jsonl_row_stops_naming_that_row(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"text": "a"}\n{"text": "b"}\n{"other": "c"}\n')
    with pytest.raises(TemplateProblem, match="'text', which row 3"):
        prepare(data, tmp_path / "jobs.jsonl", recipe())
    assert not (tmp_path / "jobs.jsonl").exists()


@pytest.mark.slow  # starts a process
def test_empty_and_repeated_keys_are_reported_by_row_and_the_rest_written(tmp_path):
    rows = [{"key": k, "text": f"t{i}"} for i, k in enumerate(["x", "y", "", "x", "z"], 1)]
    data = write_csv(tmp_path / "d.csv", rows)
    out = cli("prepare", data, "-o", tmp_path / "jobs.jsonl", "-t", "{{ text }}", "-m", "m",
              "--id-column", "key")
    assert out.returncode == 1
    assert "row 3: the id column 'key' is empty" in out.stderr
    assert "row 4: duplicate id 'x' in column 'key': row 4 repeats row 1" in out.stderr
    lines = [orjson.loads(line) for line in (tmp_path / "jobs.jsonl").read_bytes().splitlines()]
    assert [j["custom_id"] for j in lines] == ["x", "y", "z"]


@pytest.mark.slow  # over a second of real time
def test_prepare_never_writes_over_results_and_replaces_other_files_only_with_force(tmp_path):
    data = write_csv(tmp_path / "d.csv", ROWS)
    results = tmp_path / "results.jsonl"
    results.write_bytes(b'{"id": "r", "custom_id": "1", "response": {"status_code": 200, "body": {}}, "error": null}\n')
    for extra in ((), ("--force",)):
        out = cli("prepare", data, "-o", results, "-t", "{{ text }}", "-m", "m", *extra)
        assert out.returncode == 2 and "holds results" in out.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert cli("prepare", data, "-o", notes, "-t", "{{ text }}", "-m", "m").returncode == 2
    assert notes.read_text() == "my notes\n"
    assert cli("prepare", data, "-o", notes, "-t", "{{ text }}", "-m", "m", "--force").returncode == 0
    with pytest.raises(DatasetError, match="also an input"):
        prepare(data, data, recipe())


@pytest.mark.slow  # starts a process
def test_prepare_again_replaces_its_own_job_file(tmp_path):
    data = write_csv(tmp_path / "d.csv", ROWS)
    jobs = tmp_path / "jobs.jsonl"
    for template in ("A {{ text }}", "B {{ text }}"):
        assert cli("prepare", data, "-o", jobs, "-t", template, "-m", "m").returncode == 0
    assert orjson.loads(jobs.read_bytes().splitlines()[0])["body"]["messages"][0]["content"] == \
        "B Hello, world"
