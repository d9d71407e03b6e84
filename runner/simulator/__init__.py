"""The simulated OpenAI-compatible API (`server.py`): a test double that ships with the tool.

It plays the server, so it imports nothing from the client side it checks (no `jobs`, no other
`runner` package): a bug shared by both sides could not hide here.
"""
