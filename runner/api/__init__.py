"""The HTTP boundary, shared by every backend: `transport.send(request) -> response` (the only code
that touches the network), where requests go and how they authenticate (`endpoint`: OpenAI or
Azure OpenAI), Microsoft Entra ID tokens that refresh themselves (`entra`), and the rate-limit
headers answers carry (`headers`)."""
