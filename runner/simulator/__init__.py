"""The simulated OpenAI-compatible API: a test double that ships with the tool.

`server.Simulator` is the app; the modules beneath it, each importing only those drawn above it
in `server`'s docstring, are the concepts it is built from (request parsing and error bodies,
budgets and their headers, accounting and answers, configuration, fault injection, one module per
group of endpoints). It plays the server, so it imports nothing from the client side it checks
(no `jobs`, no other `runner` package): a bug shared by both sides could not hide here.
"""
