"""`runner simulate`: serve the simulated API (`runner.simulator`) for trying runner out. Its
options mirror `SimConfig` and `BatchConfig` one for one; the simulator is imported only when the
command runs."""
from __future__ import annotations

import click

from runner.cli.options import POSITIVE


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute per model.")
@click.option("--tpm", type=click.IntRange(1), help="Tokens per minute per model.")
@click.option("--burst", "burst_s", type=POSITIVE, default=60.0, show_default=True,
              help="Bucket capacity in seconds of budget.")
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability that a request meets an injected fault.")
@click.option("--faults", default="500,503,reset,truncated", show_default=True,
              help="Comma-separated fault kinds: 500, 503, hang, reset, truncated, missing_choice.")
@click.option("--quota", "quota_requests", type=click.IntRange(0),
              help="Answer insufficient_quota after this many successful requests.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--list-prompts", type=click.Choice(["ok", "ignore", "error"]), default="ok",
              show_default=True,
              help="A list prompt/input of 2+ items: answered, only its first item answered (gateway "
                   "mock), or a blank 500 (one-prompt local server).")
@click.option("--honour-n/--ignore-n", "honour_n", default=True, show_default=True,
              help="--ignore-n: one choice whatever n asks.")
@click.option("--budget-scope", type=click.Choice(["model", "key"]), default="model",
              show_default=True, help="One RPM/TPM budget per model, or per API key across models.")
@click.option("--limiter", type=click.Choice(["bucket", "window", "minute"]), default="bucket",
              show_default=True,
              help="Refilling buckets (OpenAI), fixed 60 s windows from a window's first request "
                   "with retry-after 60 (gateways), or calendar minutes (LiteLLM's router).")
@click.option("--header-style", type=click.Choice(["openai", "litellm", "litellm-router", "ietf",
                                                   "none"]),
              default="openai", show_default=True, help="Which rate-limit headers to send.")
@click.option("--serial", is_flag=True,
              help="One request at a time, each taking --latency-ms; abandoned ones still worked on.")
@click.option("--batch-lines-per-s", type=POSITIVE, default=1000.0, show_default=True,
              help="Batch API: lines a batch answers per second.")
@click.option("--batch-validate-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Batch API: seconds a batch spends validating.")
@click.option("--batch-finalize-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Batch API: seconds a batch spends finalizing.")
@click.option("--batch-expire-after-lines", type=click.IntRange(0), default=None,
              help="Batch API: a batch expires after answering this many lines.")
@click.option("--batch-max-requests", "sim_batch_max_requests", type=click.IntRange(1), default=None,
              help="Batch API: lines per file validation accepts [default: 50,000; Azure 100,000].")
@click.option("--batch-max-bytes", "sim_batch_max_bytes", type=click.IntRange(1),
              default=200 * 1024 * 1024, show_default=True,
              help="Batch API: bytes per file validation accepts.")
@click.option("--batch-token-limit", type=click.IntRange(1), default=None,
              help="Batch API: enqueued tokens per model (token_limit_exceeded beyond).")
@click.option("--batch-invalid-marker", default=None,
              help="Batch API: lines containing this text fail validation.")
@click.option("--batch-file-processing-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Batch API, Azure URLs: seconds an upload stays pending before processed.")
@click.option("--ipm", type=click.IntRange(1), help="Images per minute per image model.")
@click.option("--fault-rates", default="",
              help="Each fault's own rate, e.g. 500=0.01,503=0.01,reset=0.005,truncated=0.005,"
                   "missing_choice=0.01 (instead of --fault-rate/--faults).")
@click.option("--partial-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability that an answer of several choices comes back without some "
                   "(the missing_choice fault's rate).")
@click.option("--max-dropped", type=click.IntRange(1), default=1, show_default=True,
              help="A partial answer drops 1 to this many choices (at least one kept).")
@click.option("--refused-count", is_flag=True,
              help="A request refused 429 still uses its request (and images) budget, as OpenAI "
                   "counts failed requests.")
@click.option("--image-budget-scope", type=click.Choice(["model", "key"]), default="model",
              show_default=True, help="One image budget per image model, or per key across them.")
@click.option("--url-error", type=click.Choice(["invalid_url", "unknown_url"]),
              default="invalid_url", show_default=True,
              help="OpenAI's 404 body for an unknown path: 'Invalid URL (POST /x)' (to 2023) or "
                   "'Unknown request URL' (2024 on).")
@click.option("--api-key", "sim_api_key", default=None,
              help="Accept only this key (401 invalid_api_key for another); default any key.")
@click.option("--models", default=None,
              help="Comma-separated models that exist; another answers 404 model_not_found.")
@click.option("--deployments", "sim_deployments", default=None,
              help="Comma-separated Azure deployments that exist; another answers 404 "
                   "DeploymentNotFound.")
@click.option("--json-fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability that a chat answer asking for JSON (response_format) comes back "
                   "with its JSON broken: cut short, or missing the schema.")
def simulate(host: str, port: int, rpm: int | None, tpm: int | None, burst_s: float,
             latency_ms: float, fault_rate: float, faults: str, quota_requests: int | None,
             seed: int, list_prompts: str, honour_n: bool, budget_scope: str, limiter: str,
             header_style: str, serial: bool, ipm: int | None = None,
             batch_lines_per_s: float = 1000.0,
             batch_validate_s: float = 1.0, batch_finalize_s: float = 1.0,
             batch_expire_after_lines: int | None = None,
             sim_batch_max_requests: int | None = None,
             sim_batch_max_bytes: int = 200 * 1024 * 1024, batch_token_limit: int | None = None,
             batch_invalid_marker: str | None = None,
             batch_file_processing_s: float = 1.0, fault_rates: str = "",
             partial_rate: float = 0.0, max_dropped: int = 1, refused_count: bool = False,
             image_budget_scope: str = "model", url_error: str = "invalid_url",
             sim_api_key: str | None = None, models: str | None = None,
             sim_deployments: str | None = None, json_fault_rate: float = 0.0) -> None:
    """Serve a simulated OpenAI-compatible API (and Azure OpenAI URL shapes), with the hosted
    Batch API's Files and Batches endpoints, for trying runner out."""
    from runner.simulator.config import SimConfig
    from runner.simulator.server import serve
    from runner.simulator.batches import BatchConfig
    try:
        batch = BatchConfig(lines_per_s=batch_lines_per_s, validate_s=batch_validate_s,
                            finalize_s=batch_finalize_s, expire_after_lines=batch_expire_after_lines,
                            max_requests=sim_batch_max_requests, max_bytes=sim_batch_max_bytes,
                            enqueued_token_limit=batch_token_limit,
                            invalid_marker=batch_invalid_marker,
                            file_processing_s=batch_file_processing_s)
        config = SimConfig(rpm=rpm, tpm=tpm, burst_s=burst_s, latency_ms=latency_ms,
                           fault_rate=fault_rate,
                           faults=tuple(f.strip() for f in faults.split(",") if f.strip()),
                           quota_requests=quota_requests, seed=seed, list_prompts=list_prompts,
                           honour_n=honour_n, budget_scope=budget_scope, limiter=limiter,
                           header_style=header_style, serial=serial, ipm=ipm,
                           fault_rates=_fault_rates(fault_rates, partial_rate),
                           max_dropped=max_dropped, refused_count=refused_count,
                           image_budget_scope=image_budget_scope, url_error=url_error,
                           api_key=sim_api_key, models=_names(models),
                           deployments=_names(sim_deployments), json_fault_rate=json_fault_rate)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    serve(config, host, port, batch=batch)


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def _fault_rates(text: str, partial_rate: float) -> dict[str, float]:
    """`--fault-rates NAME=RATE,...` (and `--partial-rate`, the missing_choice rate) as a dict."""
    rates: dict[str, float] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, _, rate = item.partition("=")
        try:
            rates[name.strip()] = float(rate)
        except ValueError:
            raise ValueError(f"--fault-rates takes NAME=RATE items, got {item!r}") from None
    if partial_rate:
        rates["missing_choice"] = partial_rate
    return rates
