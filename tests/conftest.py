import asyncio

import orjson

from jobs import results
from runner.simulator.server import chat_prompt, completion_text, embedding_vector
from runner.api.transport import HttpRequest, HttpResponse


def answer_for(url: str, body: dict) -> dict:
    """What a faithful server answers for a body (deterministic, index-ordered)."""
    n = body.get("n", 1)
    if url.endswith("/embeddings"):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"object": "list", "model": body["model"],
                "data": [{"object": "embedding", "index": i, "embedding": embedding_vector(t)}
                         for i, t in enumerate(inputs)],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}
    if url.endswith("/chat/completions"):
        prompt = chat_prompt(body["messages"])
        choices = [{"index": j, "message": {"role": "assistant", "content": completion_text(prompt, j)},
                    "finish_reason": "stop"} for j in range(n)]
        return {"object": "chat.completion", "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    choices = [{"index": p * n + j, "text": completion_text(t, j), "finish_reason": "stop"}
               for p, t in enumerate(prompts) for j in range(n)]
    return {"object": "text_completion", "model": body["model"], "choices": choices,
            "usage": {"prompt_tokens": 5 * len(prompts), "completion_tokens": 3 * len(choices),
                      "total_tokens": 5 * len(prompts) + 3 * len(choices)}}


def ok(url: str, body: dict, headers: dict | None = None) -> HttpResponse:
    return HttpResponse(200, {"x-request-id": "req_test", **(headers or {})},
                        orjson.dumps(answer_for(url, body)))


def error(status: int, code: str | None, message: str = "m", headers: dict | None = None,
          type_: str | None = None) -> HttpResponse:
    body = {"error": {"message": message, "type": type_ or "invalid_request_error", "param": None, "code": code}}
    return HttpResponse(status, headers or {}, orjson.dumps(body))


class Script:
    """A `send` function: answers each request from a per-call rule, records every call."""

    def __init__(self, rule=None, latency: float = 0.0):
        self.calls: list[tuple[float, HttpRequest, dict]] = []
        self.rule = rule or (lambda n, req, body: None)
        self.latency = latency

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        body = orjson.loads(req.body)
        self.calls.append((asyncio.get_running_loop().time(), req, body))
        if self.latency:
            await asyncio.sleep(self.latency)
        outcome = self.rule(len(self.calls), req, body)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            path = req.url.split("?")[0]
            return ok(path, body)
        return outcome


RECORD_IDS = results.RecordIds("0123456789abcdef")


def success_record(custom_id: str, body, **kwargs) -> dict:
    """`jobs.results.success_record` with the next id of a test `RecordIds`."""
    return results.success_record(custom_id, body, record_id=RECORD_IDS(), **kwargs)


def error_record(custom_id: str, code: str, message: str, **kwargs) -> dict:
    """`jobs.results.error_record` with the next id of a test `RecordIds`."""
    return results.error_record(custom_id, code, message, record_id=RECORD_IDS(), **kwargs)
