"""The end-of-run summary of a run's statistics: lines for stderr and the log, and
`--summary-json`."""
from __future__ import annotations

from runner.report.stats import ModelUsage, RunStats


SHORT_RUN_S = 120.0
"""A run this short may show a rate above the limit: its opening burst is a good share of it."""
MIN_RATE_SPAN_S = 60.0
"""Per-minute rates are reported over at least this much sending time; over less, the opening
burst and the last answers' latency would make most of the figure."""


def rate_minutes(stats: RunStats, model: str) -> float | None:
    """The minutes `model`'s achieved rates are measured over: from its first request sent to its
    last answer. None where a rate would mean nothing: the Batch API (its requests are lines
    submitted, not a pace), a model none of whose jobs succeeded (how fast refusals come back
    says nothing of a budget), or sending shorter than `MIN_RATE_SPAN_S`."""
    usage = stats.usage.get(model)
    if not stats.live or not (stats.model_images.get(model) or (usage is not None and usage.jobs)):
        return None
    first, last = stats.model_sending.get(model, (0.0, 0.0))
    span = last - first
    return span / 60 if span >= MIN_RATE_SPAN_S else None


def _sending_seconds(stats: RunStats, model: str) -> float | None:
    if not stats.live or model not in stats.model_sending:
        return None
    first, last = stats.model_sending[model]
    return round(last - first, 3)


def summary_dict(stats: RunStats, output: str, prices: object | None = None) -> dict:
    """The machine-readable summary (`--summary-json`). `prices`: a `runner.report.prices.PriceTable`.

    Achieved rates are over each model's sending time, null where they would mean nothing
    (`rate_minutes`); allowed ones are the limits in force at the end (learned from the API's
    headers, else the user's). Costs are at the price table's prices (`PriceTable.basis`: list
    prices, or the Batch API's); null for models the table does not know.
    """
    wall = max(0.0, stats.finished - stats.started)
    models: dict[str, dict] = {}
    total_cost: float | None = None
    for model in sorted(set(stats.usage) | set(stats.model_requests)):
        usage = stats.usage.get(model, ModelUsage())
        rpm, tpm = stats.limits.get(model, (None, None))
        cost = None
        if prices is not None:
            cost = prices.cost(model, usage.prompt_tokens, usage.completion_tokens)  # type: ignore[attr-defined]
        images = stats.model_images.get(model, 0)
        minutes = rate_minutes(stats, model)
        if images and prices is not None and not (usage.prompt_tokens or usage.completion_tokens):
            cost = _image_cost(stats, model, prices)  # dall-e: per image; gpt-image-1: by usage
        if cost is not None:
            total_cost = (total_cost or 0.0) + cost
        if images:
            models[model] = {
                "jobs_succeeded": usage.jobs, "requests": stats.model_requests.get(model, 0),
                "images": images, "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "achieved_rpm": round(stats.model_requests.get(model, 0) / minutes, 1) if minutes else None,
                "allowed_rpm": rpm,
                "achieved_ipm": round(images / minutes, 1) if minutes else None,
                "allowed_ipm": tpm,  # an image lane's second budget counts images
                "sending_seconds": _sending_seconds(stats, model),
                "estimated_cost_usd": None if cost is None else round(cost, 6),
            }
            continue
        models[model] = {
            "jobs_succeeded": usage.jobs,
            "requests": stats.model_requests.get(model, 0),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "charged_tokens": stats.model_charged.get(model, 0),
            "achieved_rpm": round(stats.model_requests.get(model, 0) / minutes, 1) if minutes else None,
            "allowed_rpm": rpm,
            "achieved_tpm": round(stats.model_charged.get(model, 0) / minutes, 1) if minutes else None,
            "allowed_tpm": tpm,
            "sending_seconds": _sending_seconds(stats, model),
            "estimated_cost_usd": None if cost is None else round(cost, 6),
        }
    return {
        "output": output,
        "exit_code": stats.exit_code(),
        "stopped_early": stats.stop_reason,
        "wall_seconds": round(wall, 3),
        "jobs": {"in_input": stats.jobs, "input_read_to_end": stats.input_read,
                 "succeeded": stats.succeeded,
                 "already_done": stats.already_done, "failed": stats.failed_total,
                 "kept_failed": stats.kept_failed, "changed_rerun": stats.changed,
                 "changed_kept": stats.kept_changed, "bad_lines": stats.bad_lines,
                 "duplicates": stats.duplicates},
        "failures_by_code": dict(stats.failed.most_common()),
        "images_saved": stats.images,
        "requests": {"sent": stats.requests, "retries": stats.retries,
                     "rate_limited_429": stats.rate_limited, "bisect_extra": stats.bisect_requests},
        "packing_off": [{"model": model, "url": url, "reason": reason}
                        for model, url, reason in stats.packing_off],
        "n_ignored": [{"model": model, "url": url, "evidence": evidence}
                      for model, url, evidence in stats.n_ignored],
        "partial_answers": stats.partial_answers,
        "budget_shared": [{"base_url": base_url, "reason": reason}
                          for base_url, reason in stats.budget_shared],
        "models": models,
        "estimated_cost_usd": None if total_cost is None else round(total_cost, 6),
        "prices": None if prices is None else prices.basis,  # type: ignore[attr-defined]
        "spend_cap": None if stats.spend_cap is None else {
            "max_cost_usd": stats.spend_cap, "spent_usd": round(stats.spent or 0.0, 6),
            "stopped_by_cap": stats.spend_capped},
        "limit": stats.limit,
    }


def _of(allowed: float | None) -> str:
    """" of 900" against a known limit; nothing against an unknown one (no "of ?")."""
    return f" of {allowed:,.0f}" if allowed else ""


def _briefly(m: dict) -> str:
    """The requests and their sending time, where a per-minute rate would mean nothing."""
    seconds = m["sending_seconds"]
    if seconds is None or not m["requests"]:
        return ""
    return f" · {m['requests']:,} request{'s' * (m['requests'] != 1)} over {seconds:,.1f}s"


def _image_cost(stats: RunStats, model: str, prices: object) -> float | None:
    """USD for a model's images by the per-image table; None when one kind is not in it."""
    total = 0.0
    for (name, size, quality), count in stats.image_kinds.items():
        if name != model:
            continue
        price = prices.image_price(name, size, quality)  # type: ignore[attr-defined]
        if price is None:
            return None
        total += price * count
    return total


def summary_lines(stats: RunStats, output: str, prices: object | None = None) -> list[str]:
    """The human-readable end-of-run summary (stderr)."""
    wall = max(0.0, stats.finished - stats.started)
    jobs = (f"{stats.jobs:,} {'in input' if stats.input_read else 'read so far'} · "
            if stats.reads_input else "INPUT not read (collecting only) · ")
    lines = [
        f"output: {output}",
        f"jobs: {jobs}"
        f"{stats.succeeded:,} succeeded now · "
        f"{stats.already_done:,} already done · {stats.failed_total:,} failed now · "
        f"{stats.kept_failed:,} kept failed from earlier runs",
    ]
    if stats.no_jobs:
        lines.append("INPUT holds no jobs: nothing to run (exit 2)")
    if stats.changed or stats.kept_changed:
        lines.append(f"changed since their results: {stats.changed:,} sent again · "
                     f"{stats.kept_changed:,} kept with their old results")
    if stats.bad_lines or stats.duplicates:
        lines.append(f"input problems: {stats.bad_lines:,} bad lines · "
                     f"{stats.duplicates:,} duplicate custom_ids (see messages above)")
    if stats.failed:
        lines.append("failures: " + ", ".join(f"{code} {n:,}" for code, n in stats.failed.most_common()))
    sent = "sent" if stats.live else "submitted in batch files"
    lines.append(f"requests: {stats.requests:,} {sent} · {stats.retries:,} retries · "
                 f"{stats.rate_limited:,} rate-limited (429) · wall {wall:,.1f}s")
    if stats.bisect_requests:
        lines.append(f"bisecting refused packs cost {stats.bisect_requests:,} extra requests")
    for model, url, reason in stats.packing_off:
        lines.append(f"packing off for {model} ({url}): {reason}; its jobs were sent alone "
                     "(--pack keeps packing on)")
    for model, url, evidence in stats.n_ignored:
        lines.append(f"{model} ({url}) ignores n: {evidence}; its jobs asking for n > 1 failed "
                     f"as n_not_supported")
    if stats.partial_answers:
        lines.append(f"{stats.partial_answers:,} packed answers lacked some jobs' choices: the "
                     "jobs answered were kept, only the others sent again")
    for base_url, reason in stats.budget_shared:
        lines.append(f"one budget for the key over every model at {base_url} ({reason})")
    data = summary_dict(stats, output, prices)
    for model, m in data["models"].items():
        cost = m["estimated_cost_usd"]
        cost_text = f" · ~${cost:,.4f}" if cost is not None else (" · cost unknown" if prices else "")
        if "images" in m:
            achieved = (f" · {m['achieved_ipm']:,.1f}{_of(m['allowed_ipm'])} IPM"
                        if m["achieved_ipm"] is not None else _briefly(m))
            lines.append(f"{model}: {m['images']:,} images{achieved}{cost_text}")
            continue
        rates = _briefly(m)
        if m["achieved_rpm"] is not None:
            rates = (f" · {m['achieved_rpm']:,.0f}{_of(m['allowed_rpm'])} RPM"
                     f" · {m['achieved_tpm']:,.0f}{_of(m['allowed_tpm'])} TPM")
            if (m["sending_seconds"] or 0) < SHORT_RUN_S and any(
                    m[f"allowed_{k}"] and m[f"achieved_{k}"] > m[f"allowed_{k}"] for k in ("rpm", "tpm")):
                rates += " (a run this short counts the opening burst, sent at once)"
        lines.append(f"{model}: {m['prompt_tokens']:,} tokens in · {m['completion_tokens']:,} out"
                     f"{rates}{cost_text}")
    if stats.images:
        lines.append(f"images: {stats.images:,} saved as files")
    if data["estimated_cost_usd"] is not None:
        lines.append(f"estimated cost: ${data['estimated_cost_usd']:,.4f} at {data['prices']}")
    if stats.spend_cap is not None and stats.spent is not None:
        what = "spent" if stats.live else "submitted (at most, at their upper bound)"
        lines.append(f"spend cap: ${stats.spent:,.4f} {what} of ${stats.spend_cap:g} "
                     f"(--max-cost, at {data['prices']})"
                     + ("; the cap stopped the run" if stats.spend_capped else ""))
    if stats.stop_reason and stats.unusable_input:
        lines.append("STOPPED: the input cannot be run as it is (see above); results written so far "
                     "are kept")
    elif stats.stop_reason and stats.misconfigured:
        lines.append("STOPPED: a setting is wrong (see above); results written so far are kept: "
                     "fix it, then run the same command again to resume")
    elif stats.stop_reason:
        lines.append(f"STOPPED EARLY ({stats.stop_reason}); run the same command again to resume")
    return lines
