"""From a table's rows to job lines (`runner prepare`). Pure: a row in, a job line or a precise
complaint out; reading and writing the files is `runner.files.tables`'.

    row {"id": "a7", "text": "Héllo, world"}  ──►  {"custom_id": "a7", "method": "POST",
        + Recipe(template "Classify: {{ text }}",     "url": "/v1/chat/completions",
                 model, url, params, schema)          "body": {"model": ..., "messages": [...],
                                                                "max_tokens": 64, ...}}

A `Recipe` says how every row becomes a job: the prompt (a Jinja2 template over the row's
columns, rendered with `StrictUndefined`, so a column the template names and the row lacks is an
error, never an empty prompt), an optional system message (a template too), the endpoint, the
model, fixed body parameters (`--set`), and a JSON schema for structured outputs. `Ids` gives
each row its `custom_id`: the value of an id column, or the row's number (1 for the first data
row) when none is named; an empty or repeated key is a `BadRow`, reported with its row number as
a bad job line is, and the row gets no job.

Each column is a template variable (`{{ text }}`); a column whose name is no identifier is
reached through `row` (`{{ row["first name"] }}`). A missing value (an empty cell of a JSONL or
Parquet row: null) renders as the empty string, not "None".
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.meta
import orjson

from jobs.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES, body_problem

__all__ = ["URLS", "Recipe", "BadRow", "TemplateProblem", "Template", "Ids", "parse_setting",
           "response_format_of", "compile_template", "id_text"]

# Short names `--url` takes, and the field each endpoint's prompt goes in.
URLS: Mapping[str, str] = {"chat": CHAT, "completions": COMPLETIONS, "embeddings": EMBEDDINGS,
                           "moderations": MODERATIONS, "responses": RESPONSES}
PROMPT_FIELDS: Mapping[str, str] = {CHAT: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input",
                                    MODERATIONS: "input", RESPONSES: "input"}
SCHEMA_NAME_CHARS = 64  # OpenAI's limit on json_schema.name ([a-zA-Z0-9_-])
ROW_VARIABLE = "row"  # the template variable holding the whole row


class TemplateProblem(ValueError):
    """A template cannot be used: it does not parse, or it names a column the data lacks. The
    message names the column and the first row without it."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that gets no job: `reason` says why in words a user can act on."""

    row: int
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled Jinja2 template and the names it uses (`names`: the columns it needs)."""

    compiled: jinja2.Template
    names: frozenset[str]


def compile_template(text: str, what: str = "template") -> Template:
    """`text` as a Jinja2 template whose undefined names raise (StrictUndefined) and whose None
    values render empty; TemplateProblem when it does not parse."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True,
                             finalize=lambda value: "" if value is None else value)
    try:
        compiled = env.from_string(text)
        names = frozenset(jinja2.meta.find_undeclared_variables(env.parse(text)))
    except jinja2.TemplateSyntaxError as e:
        raise TemplateProblem(f"the {what} does not parse: {e.message} (line {e.lineno})") from None
    return Template(compiled, names)


def parse_setting(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` (`--set`) as (key, value): the value read as JSON when it is JSON (`64`, `0`,
    `true`, `["\\n"]`, `{"type": "json_object"}`), else taken as a string. ValueError without `=`."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


def response_format_of(schema: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The `json_schema` object of a structured-output request for `schema`: a bare JSON schema
    gets `name` (cut to OpenAI's characters and length); a file that already holds
    `{"name", "schema"[, "strict", "description"]}` is taken as it is."""
    if "schema" in schema and "name" in schema and isinstance(schema["schema"], Mapping):
        return dict(schema)
    clean = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:SCHEMA_NAME_CHARS] or "answer"
    return {"name": clean, "schema": dict(schema)}


@dataclass(frozen=True, slots=True)
class Recipe:
    """How each row becomes a job. `template`/`system` are compiled (`compile_template`);
    `params` are body fields set on every job (`--set`); `json_schema` is a `response_format_of`
    object asking for structured outputs (chat and Responses only)."""

    template: Template
    url: str = CHAT
    model: str | None = None
    system: Template | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    json_schema: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.url not in PROMPT_FIELDS:
            raise ValueError(f"prepare makes jobs for {', '.join(PROMPT_FIELDS)}, not {self.url!r}")
        prompt_field = PROMPT_FIELDS[self.url]
        if prompt_field in self.params or (self.url == RESPONSES and "instructions" in self.params
                                           and self.system is not None):
            raise ValueError(f"--set cannot set {prompt_field!r}: the template makes it")
        if self.system is not None and self.url not in (CHAT, RESPONSES):
            raise ValueError("a system message needs the chat or responses url")
        if self.json_schema is not None and self.url not in (CHAT, RESPONSES):
            raise ValueError("a response format (structured outputs) needs the chat or responses url")
        if self.model is None and self.url != MODERATIONS:
            raise ValueError(f"{self.url} needs a model (--model)")

    @property
    def names(self) -> frozenset[str]:
        """The columns the templates name (besides `row`)."""
        names = set(self.template.names)
        if self.system is not None:
            names |= self.system.names
        return frozenset(names - {ROW_VARIABLE})

    def check_columns(self, columns: list[str], row: int) -> None:
        """TemplateProblem when a template names a column the data's columns lack (its first row:
        `row`)."""
        missing = sorted(self.names - set(columns))
        if missing:
            raise TemplateProblem(
                f"the template names column {missing[0]!r}, which row {row} of the data lacks "
                f"(its columns: {', '.join(columns) or 'none'})")

    def body(self, row: Mapping[str, Any], number: int) -> dict[str, Any]:
        """The job body for `row` (data row `number`, for messages); TemplateProblem when a
        template names something the row lacks."""
        prompt = self._render(self.template, row, number)
        system = None if self.system is None else self._render(self.system, row, number)
        body: dict[str, Any] = {} if self.model is None else {"model": self.model}
        if self.url == CHAT:
            messages = [] if system is None else [{"role": "system", "content": system}]
            body["messages"] = [*messages, {"role": "user", "content": prompt}]
        else:
            body[PROMPT_FIELDS[self.url]] = prompt
            if self.url == RESPONSES and system is not None:
                body["instructions"] = system
        body.update(self.params)
        if self.json_schema is not None:
            if self.url == CHAT:
                body["response_format"] = {"type": "json_schema", "json_schema": dict(self.json_schema)}
            else:
                text = dict(body.get("text") or {})
                text["format"] = {"type": "json_schema", **self.json_schema}
                body["text"] = text
        return body

    def job(self, custom_id: str, row: Mapping[str, Any], number: int) -> dict[str, Any]:
        """The job line (a dict) for `row`; TemplateProblem as `body`, ValueError when the body is
        one the API would refuse (the message says why)."""
        body = self.body(row, number)
        problem = body_problem(self.url, body)
        if problem is not None:
            raise ValueError(problem)
        return {"custom_id": custom_id, "method": "POST", "url": self.url, "body": body}

    @staticmethod
    def _render(template: Template, row: Mapping[str, Any], number: int) -> str:
        try:
            return template.compiled.render({**row, ROW_VARIABLE: row})
        except jinja2.UndefinedError as e:
            name = _undefined_name(str(e))
            what = f"column {name!r}" if name else f"something the row lacks ({e})"
            raise TemplateProblem(
                f"the template names {what}, which row {number} of the data lacks "
                f"(its columns: {', '.join(map(str, row)) or 'none'})") from None


def _undefined_name(message: str) -> str | None:
    """The name in Jinja2's "'x' is undefined" (or "... has no attribute 'x'")."""
    match = re.search(r"'([^']+)' is undefined", message) or re.search(
        r"has no (?:attribute|element) '?([^']+?)'?$", message)
    return match.group(1) if match else None


class Ids:
    """Each row's custom_id: its `column`'s value (None: the row's number). Remembers the ids
    seen in `seen` (a mapping id -> first row; pass a disk-backed one for tables larger than
    memory), so an empty or repeated key is a BadRow naming the row that had it first."""

    __slots__ = ("column", "_seen")

    def __init__(self, column: str | None = None,
                 seen: Callable[[str, int], int] | None = None) -> None:
        self.column = column
        if seen is None:
            first: dict[str, int] = {}
            seen = first.setdefault
        self._seen = seen  # setdefault(id, row) -> the row that had the id first

    def __call__(self, row: Mapping[str, Any], number: int) -> str | BadRow:
        """The custom_id of data row `number`, or a BadRow."""
        if self.column is None:
            return str(number)
        if self.column not in row:
            return BadRow(number, f"the id column {self.column!r} is missing "
                                  f"(its columns: {', '.join(map(str, row))})")
        key = id_text(row[self.column])
        if key is None:
            return BadRow(number, f"the id column {self.column!r} is empty")
        first = self._seen(key, number)
        if first != number:
            return BadRow(number, f"duplicate id {key!r} in column {self.column!r}: row {number} "
                                  f"repeats row {first}; only row {first} gets a job")
        return key


def id_text(value: Any) -> str | None:
    """A key cell as a custom_id: text as it is (stripped of surrounding blanks), an integer (or
    a float holding one: Parquet and pandas write integer ids with a missing value as floats) in
    digits; None for an empty cell."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None
