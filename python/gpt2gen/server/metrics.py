"""Prometheus metrics, in a registry of the app's own (several apps may share a process).

Sequences are what the engine schedules: a request with ``n`` choices or several prompts runs
that many. Time to first token and latency are per HTTP request, from its arrival.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# the engine's: "cancelled" is a client gone (or shutdown), "out_of_memory" a refused allocation
FINISH_REASONS = ("length", "eos", "stop", "cancelled", "out_of_memory")

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, engine_of):
        """``engine_of()``: the engine, or None while the model loads."""
        self.registry = registry = CollectorRegistry()

        def engine_count(name):
            return lambda: getattr(engine_of(), name, 0) if engine_of() is not None else 0

        Gauge("gpt2gen_requests_running", "Sequences being generated (in the engine's batch)",
              registry=registry).set_function(engine_count("running"))
        Gauge("gpt2gen_requests_waiting", "Sequences queued for a place in the batch",
              registry=registry).set_function(engine_count("waiting"))
        self.prompt_tokens = Counter("gpt2gen_prompt_tokens_total", "Prompt tokens submitted",
                                     registry=registry)
        self.generation_tokens = Counter("gpt2gen_generation_tokens_total", "Tokens generated",
                                         registry=registry)
        self.finished = Counter("gpt2gen_requests_finished_total",
                                "Sequences finished, by the engine's finish reason "
                                "(eos: end-of-text token, stop: a stop string)",
                                ["finish_reason"], registry=registry)
        for reason in FINISH_REASONS:
            self.finished.labels(reason)
        self.responses = Counter("gpt2gen_http_responses_total", "HTTP responses by status code",
                                 ["status"], registry=registry)
        self.time_to_first_token = Histogram("gpt2gen_time_to_first_token_seconds",
                                             "From a request's arrival to its first generated token",
                                             buckets=_TTFT_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram("gpt2gen_inter_token_latency_seconds",
                                             "Between consecutive tokens of a sequence",
                                             buckets=_ITL_BUCKETS, registry=registry)
        self.request_latency = Histogram("gpt2gen_request_latency_seconds",
                                         "From a request's arrival to its last token",
                                         buckets=_LATENCY_BUCKETS, registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StatusCounter:
    """ASGI middleware counting every response's status, errors included."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.responses.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
