"""Batch generation (or scoring) on Ray Data, shaped like ``ray.data.llm``.

    import ray
    from gpt2gen.ray_data import ProcessorConfig, build_processor

    config = ProcessorConfig(model_source="gpt2", batch_size=16, concurrency=2, num_threads=1,
                             sampling_params={"max_tokens": 40, "temperature": 0.8, "seed": 0})
    processor = build_processor(config)
    ds = processor(ray.data.from_items([{"prompt": "Alan Turing theorized that"}]))
    ds.take_all()  # each row + generated_text, generated_token_ids, num_generated_tokens, ...

Rows have a ``prompt`` (text, or token ids) and optionally ``sampling_params`` with OpenAI's
names overriding the config's (see ``gpt2gen.batch_rows``). Underneath, ``GPT2Predictor`` is the
callable class ``Dataset.map_batches`` runs: one actor per model copy (``concurrency``), each
reserving ``num_threads`` CPUs, loading the model once and running ``max_concurrent_batches``
batches at once on its continuous-batching scheduler. float32 weights are a read-only
``mmap`` of ``model.safetensors`` (``gpt2gen.load_pretrained``), so the actors of one node share
one copy in the page cache; ``dtype="bf16"``/``"int8"`` pack a private copy per actor.

Needs the ``ray`` extra (``pip install "gpt2gen[ray]"``); ``import gpt2gen`` never imports this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

try:
    import pyarrow as pa
    import ray.data
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'gpt2gen.ray_data needs Ray Data: pip install "gpt2gen[ray]" ({error})'
    ) from error

from . import _core
from .batch_rows import RowRunner, check_job
from .packing import FORMATS

__all__ = ["GPT2Predictor", "Processor", "ProcessorConfig", "build_processor"]

DTYPES = ("float32", *FORMATS)

_TOKEN = [("token", pa.string()), ("token_id", pa.int64()), ("logprob", pa.float64())]
# Fixed Arrow types, so every batch of a dataset has the same schema whatever its values.
COLUMN_TYPES = {
    "generated_text": pa.string(),
    "generated_token_ids": pa.list_(pa.int64()),
    "num_generated_tokens": pa.int64(),
    "num_input_tokens": pa.int64(),
    "finish_reason": pa.string(),
    "logprobs": pa.list_(pa.struct(_TOKEN + [("top_logprobs", pa.list_(pa.struct(_TOKEN)))])),
    "prompt_token_ids": pa.list_(pa.int64()),
    "prompt_logprobs": pa.list_(pa.float64()),
    "total_logprob": pa.float64(),
    "perplexity": pa.float64(),
    "error": pa.string(),
}


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass
class ProcessorConfig:
    """What ``build_processor`` runs.

    - ``model_source``: a model directory (present at that path on every node) or a model name
      (``gpt2`` ...; each node downloads it once into ``models_dir`` or the Hugging Face cache).
    - ``batch_size``: rows per ``map_batches`` batch, and the engine's running batch (its
      ``max_batch``): a batch's rows decode together.
    - ``concurrency``: actors (model copies), or ``(min, max)`` for an autoscaling pool.
    - ``max_concurrent_batches``: batches each actor works on at once; from the second on, their
      rows join the running batch as the first batch's rows finish (continuous batching), so it
      stays full.
    - ``num_threads``: engine threads per actor; each actor reserves that many CPUs.
    - ``dtype``: ``float32`` (mapped from the file), ``bf16``, ``int8`` or ``int4`` (packed per
      actor).
    - ``kv_cache_dtype``: ``float32`` (keys and values as computed) or ``bf16`` (half the cache).
    - ``sampling_params``: every row's defaults, OpenAI's names (a row's own override them).
    - ``task``: ``generate``, or ``score`` (the prompt's per-token log-probabilities).
    - ``fail_fast``: a failing row fails the job, instead of filling that row's ``error``.
    """

    model_source: Union[str, os.PathLike]
    batch_size: int = 16
    concurrency: Union[int, tuple] = 1
    max_concurrent_batches: int = 2
    num_threads: int = 1
    dtype: str = "float32"
    kv_cache_dtype: str = "float32"
    sampling_params: dict = field(default_factory=dict)
    task: str = "generate"
    fail_fast: bool = False
    models_dir: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.model_source, (str, os.PathLike)):
            raise TypeError(
                f"model_source must be a model name or directory, got {type(self.model_source).__name__}"
            )
        self.model_source = os.fspath(self.model_source)  # a str travels to the actors as it is
        _positive_int("batch_size", self.batch_size)
        _positive_int("num_threads", self.num_threads)
        _positive_int("max_concurrent_batches", self.max_concurrent_batches)
        if isinstance(self.concurrency, tuple):
            if len(self.concurrency) != 2:
                raise ValueError(
                    f"concurrency must be an int or a (min, max) pair, got {self.concurrency!r}"
                )
            for value in self.concurrency:
                _positive_int("concurrency", value)
            if self.concurrency[0] > self.concurrency[1]:
                raise ValueError(
                    f"concurrency (min, max) needs min <= max, got {self.concurrency!r}"
                )
        else:
            _positive_int("concurrency", self.concurrency)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _core.check_kv_cache_dtype(self.kv_cache_dtype)
        if not isinstance(self.fail_fast, bool):
            raise TypeError(f"fail_fast must be True or False, got {self.fail_fast!r}")
        check_job(
            self.sampling_params, self.task
        )  # as the actors will, but here where the mistake is


class GPT2Predictor:
    """The callable class for ``Dataset.map_batches(GPT2Predictor, fn_constructor_kwargs=
    {"config": config}, batch_format="pyarrow", ...)``: loads the model once per actor and adds
    the output columns to each batch (replacing input columns of the same name)."""

    def __init__(self, config: ProcessorConfig):
        import gpt2gen

        gpt2gen.set_num_threads(config.num_threads)
        self.model = gpt2gen.GPT2.from_pretrained(
            config.model_source,
            config.models_dir,
            dtype=config.dtype,
            kv_cache_dtype=config.kv_cache_dtype,
            max_batch=config.batch_size,
        )
        self.runner = RowRunner(
            self.model, config.sampling_params, task=config.task, fail_fast=config.fail_fast
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "prompt" not in batch.column_names:
            raise ValueError(
                f"gpt2gen's processor needs a 'prompt' column (text or token ids), the batch "
                f"has {batch.column_names}; make one with build_processor(preprocess=...)"
            )
        params = (
            batch.column("sampling_params").to_pylist()
            if "sampling_params" in batch.column_names
            else None
        )
        rows = self.runner.run(batch.column("prompt").to_pylist(), params)
        for name in self.runner.columns:
            values = pa.array([row[name] for row in rows], type=COLUMN_TYPES[name])
            if name in batch.column_names:
                batch = batch.set_column(batch.column_names.index(name), name, values)
            else:
                batch = batch.append_column(name, values)
        return batch


class Processor:
    """``processor(dataset) -> dataset``: preprocess (a row function, ``Dataset.map``), the model
    (``Dataset.map_batches`` on an actor pool), postprocess (a row function). Lazy, as Ray Data is:
    nothing runs until the result is consumed."""

    def __init__(
        self,
        config: ProcessorConfig,
        preprocess: Optional[Callable] = None,
        postprocess: Optional[Callable] = None,
        preprocess_map_kwargs: Optional[dict] = None,
        postprocess_map_kwargs: Optional[dict] = None,
    ):
        if not isinstance(config, ProcessorConfig):
            raise TypeError(
                f"config must be a gpt2gen.ray_data.ProcessorConfig, got {type(config).__name__}"
            )
        for name, fn in (("preprocess", preprocess), ("postprocess", postprocess)):
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"{name} must be a function of a row (a dict), got {type(fn).__name__}"
                )
        self.config = config
        self.preprocess, self.postprocess = preprocess, postprocess
        self.preprocess_map_kwargs = dict(preprocess_map_kwargs or {})
        self.postprocess_map_kwargs = dict(postprocess_map_kwargs or {})

    def __call__(self, dataset: ray.data.Dataset) -> ray.data.Dataset:
        if not isinstance(dataset, ray.data.Dataset):
            raise TypeError(f"a processor maps a ray.data.Dataset, got {type(dataset).__name__}")
        if self.preprocess is not None:
            dataset = dataset.map(self.preprocess, **self.preprocess_map_kwargs)
        config = self.config
        if isinstance(config.concurrency, tuple):
            sizes = dict(min_size=config.concurrency[0], max_size=config.concurrency[1])
        else:
            sizes = dict(size=config.concurrency)
        # Batches of one actor run in threads, all on the actor's one model and its scheduler.
        pool = ray.data.ActorPoolStrategy(
            **sizes,
            max_concurrent_calls_per_actor=config.max_concurrent_batches,
            enable_true_multi_threading=config.max_concurrent_batches > 1,
        )
        dataset = dataset.map_batches(
            GPT2Predictor,
            fn_constructor_kwargs={"config": config},
            batch_size=config.batch_size,
            batch_format="pyarrow",
            compute=pool,
            num_cpus=config.num_threads,
        )
        if self.postprocess is not None:
            dataset = dataset.map(self.postprocess, **self.postprocess_map_kwargs)
        return dataset


def build_processor(
    config: ProcessorConfig,
    preprocess: Optional[Callable[[dict], dict]] = None,
    postprocess: Optional[Callable[[dict], dict]] = None,
    *,
    preprocess_map_kwargs: Optional[dict[str, Any]] = None,
    postprocess_map_kwargs: Optional[dict[str, Any]] = None,
) -> Processor:
    """A ``Processor`` for ``config``, as ``ray.data.llm.build_processor``: ``preprocess`` turns an
    input row into one with ``prompt`` (and optionally ``sampling_params``); ``postprocess`` shapes
    each output row. The ``*_map_kwargs`` go to their ``Dataset.map`` (e.g. ``num_cpus``)."""
    return Processor(config, preprocess, postprocess, preprocess_map_kwargs, postprocess_map_kwargs)
