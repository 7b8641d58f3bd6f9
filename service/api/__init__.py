"""The HTTP job service: a FastAPI app assembled in app.py from small modules.

- app.py: create_app(settings) wires the store, the worker pool, auth, limits, errors and metrics
- job_routes.py: /v1/jobs...; ops_routes.py: /v1/plugins..., /healthz, /readyz, /metrics, the docs
- submit.py: reading a submitted body into a validated config; schemas.py: request/response models
- guard.py: the token check; problems.py: problem+json errors; metrics.py: Prometheus counters
- settings.py: what `gradloop serve` configures; workers.py: serving from several processes
- files.py: reading job logs and artifacts back
- timeouts.py: read deadlines for slow clients, and clients that leave mid-body
"""
