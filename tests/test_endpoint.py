"""Where requests go and how they authenticate: OpenAI-compatible and Azure OpenAI."""
import orjson
import pytest

from jobs.job import Job
from jobs.packing import single
from runner.api.endpoint import Endpoint


def request(model="gpt-4o-mini", url="/v1/chat/completions"):
    return single(Job("id 1", url, {"model": model, "messages": []}, 1), 5)


def test_openai_urls_are_relative_to_the_base_url_and_the_body_is_unchanged():
    endpoint = Endpoint(base_url="https://api.example.com/v1/", api_key="sk-secret-123")
    http = endpoint.build(request())
    assert http.url == "https://api.example.com/v1/chat/completions"
    assert http.headers["Authorization"] == "Bearer sk-secret-123" and "api-key" not in http.headers
    assert orjson.loads(http.body) == {"model": "gpt-4o-mini", "messages": []}
    assert endpoint.budget_key("gpt-4o-mini") == ("https://api.example.com/v1", "gpt-4o-mini")


def test_azure_urls_name_the_deployment_and_api_version_with_an_api_key_header():
    endpoint = Endpoint(base_url="https://res.openai.azure.com", api_key="k" * 32, azure=True,
                        api_version="2024-10-21", deployments={"gpt-4o-mini": "prod mini"})
    http = endpoint.build(request(url="/v1/embeddings"))
    assert http.url == ("https://res.openai.azure.com/openai/deployments/prod%20mini/embeddings"
                        "?api-version=2024-10-21")
    assert http.headers["api-key"] == "k" * 32 and "Authorization" not in http.headers
    assert endpoint.budget_key("gpt-4o-mini") == ("https://res.openai.azure.com", "prod mini")
    assert endpoint.deployment("other-model") == "other-model"  # unmapped: named like the model


def test_azure_with_an_entra_id_token_sends_a_bearer_token():
    endpoint = Endpoint(base_url="https://res.openai.azure.com", api_key="eyJ0.token", azure=True,
                        api_version="2024-10-21", bearer=True)
    headers = endpoint.build(request()).headers
    assert headers["Authorization"] == "Bearer eyJ0.token" and "api-key" not in headers


def test_azure_needs_an_api_version():
    with pytest.raises(ValueError, match="api-version"):
        Endpoint(base_url="https://res.openai.azure.com", api_key="k", azure=True)


def test_the_key_never_shows_in_reprs():
    endpoint = Endpoint(api_key="sk-do-not-print-me")
    http = endpoint.build(request())
    assert "sk-do-not-print-me" not in repr(endpoint) and "sk-do-not-print-me" not in repr(http)
