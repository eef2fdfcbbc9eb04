"""llama.cpp beside gpt2gen: its tools found (or built from source) and our weights written as GGUF.

Shared by the benchmarks that race llama.cpp (bench_serve.py, bench_llama.py) and by the
llama.cpp column of the accuracy table (llama_kl.py). llama.cpp comes from the source that
``llama-cpp-python``'s sdist vendors, built with ``-DGGML_NATIVE=ON``; its GGUF files hold the
very tensors gpt2gen runs on, written with the ``gguf`` package, and the smaller types are made
from the f32 file by ``llama-quantize``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp's source
TOOLS = ("llama-bench", "llama-server", "llama-quantize", "llama-perplexity")
# GPT-2 124M, the shape the benchmarks race on (Hugging Face config names).
SHAPE_124M = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
# Each gpt2gen weight format and the llama.cpp type it is raced against (issue 15).
PEER_TYPE = {"fp32": "f32", "bf16": "f16", "int8": "q8_0", "int4": "q4_0"}


# --- finding and building the tools --------------------------------------------------------------


def add_arguments(parser, tool: str) -> None:
    """``--<tool> PATH`` (default ``$<TOOL>``, else on PATH) and ``--build-llama DIR``."""
    env = tool.upper().replace("-", "_")
    parser.add_argument(f"--{tool}", default=os.environ.get(env), metavar="PATH",
                        help=f"{tool} binary (default: ${env}, else {tool} on PATH); llama.cpp's other "
                             "tools are taken from the same directory")
    parser.add_argument("--build-llama", metavar="DIR",
                        help=f"if {tool} is not found: download {LLAMA_CPP_PYTHON}'s sdist into DIR and "
                             "build llama.cpp there (~15 min on 2 cores; reused by later runs)")


def find_tool(tool: str, given: str | None, build_dir: str | None, prog: str) -> Path:
    """``tool``'s path: ``given``, else on PATH, else built in ``build_dir``; exits with a one-line
    hint when none applies."""
    found = given or shutil.which(tool)
    if found is None and build_dir:
        found = build_llama(Path(build_dir)) / tool
    if found is None:
        env = tool.upper().replace("-", "_")
        sys.exit(f"{prog}: {tool} not found: pass --{tool} PATH, set {env}, or use --build-llama DIR")
    if not Path(found).is_file():
        sys.exit(f"{prog}: {tool} not found at {found}")
    return Path(found)


def sibling_tool(found: Path, tool: str, build_dir: str | None, prog: str) -> Path:
    """Another llama.cpp tool from the directory ``found`` is in (built there when ``build_dir``
    is that build and the target is missing)."""
    path = found.with_name(tool)
    if not path.is_file() and build_dir:
        path = build_llama(Path(build_dir)) / tool
    if not path.is_file():
        sys.exit(f"{prog}: {tool} not found next to {found}; build it: "
                 f"cmake --build {found.parent.parent} --target {tool}")
    return path


def build_llama(root: Path) -> Path:
    """Downloads the sdist into ``root`` (once) and builds every tool in TOOLS that is missing;
    returns the directory of the binaries."""
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = root / "build" / "bin"
    if all((bin_dir / tool).is_file() for tool in TOOLS):
        return bin_dir
    if not list(root.glob("llama_cpp_python-*/vendor/llama.cpp")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                        LLAMA_CPP_PYTHON, "-d", str(root)], check=True)
        (sdist,) = root.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(root, filter="data")
    (source,) = root.glob("llama_cpp_python-*/vendor/llama.cpp")
    subprocess.run(["cmake", "-S", str(source), "-B", str(root / "build"), "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
                   check=True)
    return bin_dir


# --- weights -------------------------------------------------------------------------------------


def checkpoint(workdir: Path) -> Path:
    """The random 124M-shape checkpoint in Hugging Face layout (written once, seed 0)."""
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' checkpoint writer
    from conftest import make_numpy_gpt2

    model_dir = workdir / "gpt2-124M-random"
    if not (model_dir / "model.safetensors").exists():
        print("writing random 124M-shape weights ...", flush=True)
        made, _ = make_numpy_gpt2(workdir, name="gpt2-124M-random.tmp", with_buffers=False, seed=0, **SHAPE_124M)
        made.rename(model_dir)
    return model_dir


def tokenizer_files(model_dir: Path) -> tuple[list, list]:
    """(tokens in id order, merges) of a GPT-2 tokenizer directory (vocab.json, merges.txt)."""
    vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = [line for line in (model_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    return sorted(vocab, key=vocab.get), merges


def checkpoint_gguf(model_dir: Path, path: Path) -> Path:
    """A checkpoint directory's tensors and vocabulary as f32 GGUF (written once)."""
    from gpt2gen.checkpoint import load_pretrained

    if not path.exists():
        print(f"writing {path.name} ...", flush=True)
        _, hparams, params = load_pretrained(str(model_dir))
        write_gguf(path, params, hparams["n_head"], *tokenizer_files(model_dir))
    return path


def write_gguf(path: Path, params: dict, n_head: int, tokens: list, merges: list) -> Path:
    """float32 picoGPT-layout ``params`` as f32 GGUF, named and laid out as llama.cpp's GPT-2
    converter writes them (Conv1D weights transposed, the tied output matrix written out)."""
    import gguf

    E = params["wte"].shape[1]
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_context_length(params["wpe"].shape[0])
    writer.add_embedding_length(E)
    writer.add_feed_forward_length(params["blocks"][0]["mlp"]["c_fc"]["w"].shape[1])
    writer.add_block_count(len(params["blocks"]))
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    eot = tokens.index("<|endoftext|>")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)  # as gpt2gen: the tokens given are the tokens run

    def add(name, array, transpose=False):
        array = np.asarray(array, dtype=np.float32)
        writer.add_tensor(name, np.ascontiguousarray(array.T if transpose else array))

    add("token_embd.weight", params["wte"])
    add("position_embd.weight", params["wpe"])
    add("output.weight", params["wte"])
    add("output_norm.weight", params["ln_f"]["g"])
    add("output_norm.bias", params["ln_f"]["b"])
    names = {("ln_1",): "attn_norm", ("attn", "c_attn"): "attn_qkv", ("attn", "c_proj"): "attn_output",
             ("ln_2",): "ffn_norm", ("mlp", "c_fc"): "ffn_up", ("mlp", "c_proj"): "ffn_down"}
    for i, block in enumerate(params["blocks"]):
        for keys, name in names.items():
            node = block
            for key in keys:
                node = node[key]
            if "g" in node:
                add(f"blk.{i}.{name}.weight", node["g"])
            else:
                add(f"blk.{i}.{name}.weight", node["w"], transpose=True)
            add(f"blk.{i}.{name}.bias", node["b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes of weights a batch-1 decode step of llama.cpp reads from a GGUF written by
    ``write_gguf``: every tensor but the two embeddings, of which it reads one row each (the
    tied output matrix is its own tensor, output.weight), as ``weight_bytes_per_token``."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    embeddings = [tensors.pop(name) for name in ("token_embd.weight", "position_embd.weight")]
    return sum(int(t.n_bytes) for t in tensors.values()) + sum(int(t.n_bytes) // int(t.shape[1])
                                                               for t in embeddings)


def quantized(quantizer: Path, f32: Path, llama_type: str) -> Path:
    """The f32 GGUF ``f32`` as ``llama_type`` (f16, q8_0, q4_0, ...), next to it (made once);
    ``f32`` itself for f32. llama-quantize's own choices stand (q4_0 keeps output.weight in q6_K)."""
    if llama_type == "f32":
        return f32
    path = f32.with_name(f32.name.replace("-f32.gguf", f"-{llama_type}.gguf"))
    if path == f32:
        raise ValueError(f"{f32}: the f32 GGUF's name must end in -f32.gguf")
    if not path.exists():
        print(f"llama-quantize -> {path.name} ...", flush=True)
        subprocess.run([str(quantizer), str(f32), str(path), llama_type.upper()], check=True, capture_output=True)
    return path
