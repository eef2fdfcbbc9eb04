"""Load GPT-2 checkpoints in Hugging Face layout into picoGPT's ``(encoder, hparams, params)``.

A model directory holds ``config.json``, ``model.safetensors``, ``vocab.json`` and ``merges.txt``
(what ``GPT2LMHeadModel.save_pretrained`` plus the tokenizer files give, and what the Hub's
``openai-community/gpt2*`` repositories contain). ``load_pretrained`` also accepts a model name
(``gpt2`` ... ``gpt2-xl`` or picoGPT's ``124M`` ... ``1558M``), downloaded once with
``huggingface_hub``.

One module per concern:

- ``safetensors_file``: the ``.safetensors`` reader (validated header, float32 views of an mmap);
- ``sharded``: checkpoints split over several files by a ``*.index.json`` weight map;
- ``torch_pickle``: pickled ``pytorch_model.bin`` files, refused unless ``allow_pickle=True``;
- ``config``: ``config.json`` -> hparams, refusing what the engine does not implement;
- ``to_params``: checkpoint tensor names -> picoGPT's params tree, every tensor checked;
- ``hub``: model names -> directories, downloading with ``huggingface_hub``;
- ``loader``: ``load_checkpoint`` and ``load_pretrained``, which put the above together.

Every problem with a file is a ``CheckpointError`` (a ``ValueError``) whose message names the file
and, where it applies, the tensor (its checkpoint name and its key path in ``params``).
"""

from .config import load_hparams
from .errors import CheckpointDownloadError, CheckpointError, PickleNotAllowedError
from .hub import MODEL_ALIASES, MODEL_FILES, MODEL_REPOS, resolve_model_dir
from .loader import load_checkpoint, load_pretrained
from .safetensors_file import SafetensorsFile, open_safetensors
from .to_params import checkpoint_to_params, expected_tensors

__all__ = [
    "CheckpointError",
    "CheckpointDownloadError",
    "PickleNotAllowedError",
    "MODEL_REPOS",
    "MODEL_ALIASES",
    "MODEL_FILES",
    "SafetensorsFile",
    "checkpoint_to_params",
    "expected_tensors",
    "load_checkpoint",
    "load_hparams",
    "load_pretrained",
    "open_safetensors",
    "resolve_model_dir",
]
