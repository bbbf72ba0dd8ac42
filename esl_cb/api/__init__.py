"""The HTTP API and the web pages (issue 19): `esl-cb api`, its own process, talking only to the
database, so no HTTP request can delay a controller (the controllers are woken by NOTIFY, as by
the command line).

  settings.py   its settings (listen, TLS, proxy, rate limit, webhooks) and their checks
  errors.py     the API's own errors (tokens, rate, idempotency); every error is a problem document
  auth.py       bearer tokens, roles, the rate limit per token
  app.py        the FastAPI application: routes, problem documents, the background loops
  callbacks.py  /api/v1/callbacks: book (idempotent), read, list, change, cancel
  queues.py     /api/v1/queues, /api/v1/agents, /api/v1/reports
  views.py      the documents these answer with
  events.py     /api/v1/events: Server-Sent Events fed by PostgreSQL LISTEN
  webhooks.py   the outbox's delivery loop (signed, retried with backoff)
  pages.py      the supervisor, agent and reports pages (esl_cb/web/: templates and plain JavaScript)
  server.py     uvicorn, with TLS or behind a proxy
"""
