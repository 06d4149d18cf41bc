"""``zq http``: the cluster's web dashboard, JSON admin API and Prometheus metrics.

An ASGI app (FastAPI) served by uvicorn, talking to the cluster as a ``zq.Client``:

    app.py      the app: pages, login, /docs, /metrics, the guard middleware
    api.py      the JSON routes (admin API and the dashboard's reads)
    auth.py     token, login session, CSRF, Host guard, the bind rule
    gateway.py  blocking client calls in a bounded pool, with a timeout; errors -> HTTP
    sampler.py  one stats sample per interval for the Overview (throughput, latency)
    metrics.py  the Prometheus collector (one stats() call per scrape)
    views.py    plain-data views (results, filters, schedules' next run)
    server.py   uvicorn on a socket bound here; READY line; signals
    static/     the dashboard (vanilla JS, no CDN) and vendored Swagger UI for /docs

Needs the ``web`` extra: ``pip install "zq[web]"``.
"""
