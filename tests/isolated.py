"""Code run in a fresh interpreter: a crash there fails one test instead of the whole session."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path


def isolated_env() -> dict:
    """The environment for a subprocess: under .ci/sanitize.sh its sanitizer reports go to its
    own stderr (which the test captures and checks) rather than to the run's report files, which
    are for reports nobody expected."""
    env = dict(os.environ)
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        if "log_path=" in env.get(var, ""):
            env[var] = re.sub(r"log_path=[^:]*", "log_path=stderr", env[var])
    return env


def run_isolated(code: str, *, setup: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs setup then code with numpy as np, gpt2gen and random_params imported."""
    prelude = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import numpy as np, gpt2gen
        from random_models import random_params
    """) + textwrap.dedent(setup)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=isolated_env())
