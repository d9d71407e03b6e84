"""`runner estimate`: counts, packing, tokens, time and cost before anything is spent; and prices."""
import functools

import orjson
import pytest

from jobs import estimate, tokens
from runner.report.prices import PriceTableError, load_prices, packaged_prices, parse_prices
from runner.report.estimate import estimate_file, estimate_json, estimate_table
from runner.report.render import print_report
from runner.tokenizer import token_counter

estimate_lines = functools.partial(estimate.estimate_lines, counter=token_counter)


def chat(cid, content="Say hi", model="gpt-4o-mini", **extra):
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **extra}}


def completion(cid, prompt="12345678", model="gpt-3.5-turbo-instruct", max_tokens=8):
    return {"custom_id": cid, "method": "POST", "url": "/v1/completions",
            "body": {"model": model, "prompt": prompt, "max_tokens": max_tokens}}


def lines(*items):
    return [item if isinstance(item, bytes) else orjson.dumps(item) for item in items]


def by_model(est):
    return {m.model: m for m in est.models}


# --- counting ---------------------------------------------------------------------------------

def test_counts_valid_jobs_bad_lines_and_duplicates_with_file_and_line():
    est = estimate_lines(lines(chat("a", max_tokens=5), b"not json", chat("a", max_tokens=5),
                               b"", chat("b", max_tokens=5)), "in.jsonl")
    assert est.jobs == 2
    assert est.bad_lines.count == 1 and str(est.bad_lines.first[0]).startswith("in.jsonl:2: not JSON")
    assert est.duplicates.count == 1 and est.duplicates.first[0].line == 3
    assert est.duplicates.first[0].custom_id == "a"


def test_flagged_lines_are_bounded_but_all_counted():
    # a job early on: a file of nothing but bad lines stops reading (see test_reader)
    junk = lines(*[b"junk"] * 10, completion("ok"), *[b"junk"] * 40)
    est = estimate_lines(junk, "in.jsonl", max_flagged=3)
    assert est.bad_lines.count == 50
    assert [f.line for f in est.bad_lines.first] == [1, 2, 3]


def test_prompt_over_the_context_window_is_flagged_and_never_counted_as_sent():
    huge = completion("big", prompt="hello " * 5000)
    est = estimate_lines(lines(completion("ok"), huge), "in.jsonl")
    model = by_model(est)["gpt-3.5-turbo-instruct"]
    assert est.over_context.count == 1
    flag = est.over_context.first[0]
    assert (flag.line, flag.custom_id) == (2, "big")
    assert "over the 4096-token context window" in flag.reason
    assert (model.jobs, model.over_context, model.requests) == (2, 1, 1)
    assert model.prompt_tokens == tokens.prompt_tokens("/v1/completions", completion("ok")["body"], token_counter)


# --- tokens and packing -----------------------------------------------------------------------

def test_tokens_per_model_are_the_sums_of_the_per_job_token_functions():
    jobs = [chat("a", "What is the capital of France?", max_tokens=50, n=2),
            chat("b", "Name three colours.", max_completion_tokens=20)]
    est = estimate_lines(lines(*jobs), "in.jsonl")
    model = by_model(est)["gpt-4o-mini"]
    assert model.prompt_tokens == sum(tokens.prompt_tokens(j["url"], j["body"], token_counter) for j in jobs)
    assert model.max_completion_tokens == 50 * 2 + 20
    assert model.charge == sum(tokens.rate_limit_charge(j["url"], j["body"]) for j in jobs)
    assert model.requests == 2  # chat never packs


def test_packable_completions_share_requests_sized_by_the_given_limits():
    jobs = lines(*[completion(f"c{i}") for i in range(30)])  # charge 2 + 8 = 10 tokens each
    # pack size = ceil(tpm / rpm / charge x 1.25) = ceil(6000 / 60 / 10 x 1.25) = 13 -> 13 + 13 + 4
    limited = by_model(estimate_lines(jobs, "in.jsonl", rpm=60, tpm=6000))["gpt-3.5-turbo-instruct"]
    assert (limited.requests, limited.packed_jobs, limited.charge) == (3, 30, 300)
    # no limits: the packer's default pack size (64) holds them all
    unknown = by_model(estimate_lines(jobs, "in.jsonl"))["gpt-3.5-turbo-instruct"]
    assert unknown.requests == 1


# --- time -------------------------------------------------------------------------------------

def test_time_is_unknown_without_limits():
    est = estimate_lines(lines(chat("a", max_tokens=5)), "in.jsonl")
    assert est.minutes is None and by_model(est)["gpt-4o-mini"].minutes(est.budget) is None


def test_time_per_model_is_the_binding_limit_and_the_total_is_the_slowest_model():
    items = [chat(f"a{i}", max_tokens=10) for i in range(6)] + [
        chat("e", max_tokens=10, model="gpt-4.1")]
    est = estimate_lines(lines(*items), "in.jsonl", rpm=3, tpm=1_000_000)
    models = by_model(est)
    assert models["gpt-4o-mini"].minutes(est.budget) == pytest.approx(6 / 3)  # requests bind
    assert models["gpt-4.1"].minutes(est.budget) == pytest.approx(1 / 3)
    assert est.minutes == pytest.approx(2.0)  # models run in parallel
    tokens_bound = estimate_lines(lines(*items), "in.jsonl", rpm=1000, tpm=60)
    mini = by_model(tokens_bound)["gpt-4o-mini"]
    assert mini.minutes(tokens_bound.budget) == pytest.approx(mini.charge / 60)


# --- cost -------------------------------------------------------------------------------------

def test_cost_is_prompt_tokens_at_input_price_plus_max_completion_at_output_price():
    est = estimate_lines(lines(chat("a", "hello there", max_tokens=100)), "in.jsonl",
                         cost=load_prices().cost)
    model = by_model(est)["gpt-4o-mini"]
    assert model.cost == pytest.approx((model.prompt_tokens * 0.15 + 100 * 0.60) / 1e6)
    assert est.to_json()["total"]["cost_is_upper_bound"] is True


def test_unknown_model_has_no_cost_and_is_named_not_guessed():
    est = estimate_lines(lines(chat("a", model="my-azure-deployment", max_tokens=5),
                               chat("b", max_tokens=5)), "in.jsonl", cost=load_prices().cost)
    assert by_model(est)["my-azure-deployment"].cost is None
    assert est.unpriced == ["my-azure-deployment"]
    assert est.cost == pytest.approx(by_model(est)["gpt-4o-mini"].cost)


def test_chat_without_max_tokens_is_counted_as_unbounded_output():
    est = estimate_lines(lines(chat("a"), chat("b", max_tokens=5)), "in.jsonl")
    assert est.uncapped == 1
    assert est.to_json()["total"]["cost_is_upper_bound"] is False


# --- the file shell and the report ----------------------------------------------------------

def test_estimate_file_reports_json_and_a_table(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines(chat("a", max_tokens=5), b"{oops", chat("a", max_tokens=5),
                                      completion("big", prompt="hello " * 5000))) + b"\n")
    prices = load_prices()
    est = estimate_file(str(path), rpm=100, tpm=10_000, prices=prices)
    data = orjson.loads(orjson.dumps(estimate_json(est, prices)))  # plain JSON types only
    assert data["jobs"] == 2 and data["bad_lines"]["count"] == 1
    assert data["duplicates"]["first"][0]["line"] == 3
    assert data["over_context"]["first"][0]["line"] == 4
    assert data["prices"]["as_of"] == prices.as_of
    print_report(estimate_table(est, prices))
    out = capsys.readouterr().out
    assert "gpt-4o-mini" in out and f"{path}:2:" in out and f"{path}:4:" in out


def test_estimate_file_of_a_missing_input_is_an_error(tmp_path):
    from runner.files.inputs import UnreadableInput
    with pytest.raises(UnreadableInput, match="cannot read input"):
        estimate_file(str(tmp_path / "nope.jsonl"), rpm=None, tpm=None, prices=load_prices())


# --- prices -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, expected", [
    ("gpt-4o-mini", (0.15, 0.60)),
    ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),       # dated snapshot -> its base entry
    ("gpt-4o-2024-08-06", (2.50, 10.00)),
    ("gpt-4o-2024-05-13", (5.00, 15.00)),           # a snapshot with its own price wins
    ("gpt-3.5-turbo-0125", (0.50, 1.50)),           # old-style date suffix
    ("GPT-4.1-mini", (0.40, 1.60)),
    ("openai/gpt-5-nano", (0.05, 0.40)),
    ("text-embedding-3-small", (0.02, 0.0)),
    ("gpt-5-pro", None),                            # not gpt-5: never guessed
    ("ft:gpt-4o-mini-2024-07-18:org::abc", None),   # fine-tunes cost more: unknown
    ("gpt-4o-mini-tts", None),
    ("my-deployment", None),
])
def test_price_lookup_matches_full_name_or_name_without_date(model, expected):
    price = packaged_prices().lookup(model)
    assert (None if price is None else (price.input, price.output)) == expected


def test_packaged_table_prices_every_model_it_promises_and_says_where_from():
    table = packaged_prices()
    for model in ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5",
                  "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini", "o1", "gpt-4-turbo",
                  "gpt-3.5-turbo", "gpt-3.5-turbo-instruct", "text-embedding-3-small",
                  "text-embedding-3-large", "text-embedding-ada-002", "davinci-002",
                  "babbage-002"]:
        assert table.lookup(model) is not None, model
    assert "openai.com" in table.source and table.as_of


def test_cost_is_none_for_an_unknown_model_and_exact_for_a_known_one():
    table = packaged_prices()
    assert table.cost("mystery", 10, 10) is None
    assert table.cost("gpt-5", 1_000_000, 2_000_000) == pytest.approx(1.25 + 20.0)


def test_user_price_file_overrides_and_extends_the_packaged_table(tmp_path):
    override = tmp_path / "prices.toml"
    override.write_text('[meta]\nas_of = "2030-01"\n'
                        '[models.gpt-4o-mini]\ninput = 1.0\noutput = 2.0\n'
                        '[models.my-deployment]\ninput = 3.0\noutput = 4.0\n')
    table = load_prices(override)
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.cost("my-deployment", 1_000_000, 0) == pytest.approx(3.0)
    assert table.lookup("gpt-4.1") == packaged_prices().lookup("gpt-4.1")
    assert table.as_of == "2030-01" and str(override) in table.files


@pytest.mark.parametrize("text, message", [
    ("[models.x]\noutput = 1.0\n", "models.x: missing input"),
    ("[models.x]\ninput = \"cheap\"\n", "models.x.input must be a number"),
    ("[models.x]\ninput = -1.0\n", "input must be a finite number >= 0"),
    ("[models.x]\ninput = 1.0\nouput = 2.0\n", "models.x: unknown key 'ouput'"),
    ("[model.x]\ninput = 1.0\n", "unknown table 'model'"),
    ("[models.x\n", "not valid TOML"),
])
def test_malformed_price_files_are_rejected_naming_file_and_key(text, message):
    with pytest.raises(PriceTableError) as e:
        parse_prices(text, "my-prices.toml")
    assert str(e.value).startswith("my-prices.toml: ") and message in str(e.value)


def test_missing_price_file_is_an_error(tmp_path):
    with pytest.raises(PriceTableError, match="cannot read price file"):
        load_prices(tmp_path / "nope.toml")


def test_price_table_is_package_data():
    import importlib.resources
    assert importlib.resources.files("runner.report").joinpath("prices.toml").is_file()
