# Sourced by .ci/sanitize.sh and .ci/fuzz.sh, which build gpt2gen privately.

# make_work_dir NAME [DIR]: sets $work to DIR, or to a new temporary folder that is removed when
# the script succeeds and kept (logs, reports, crashing inputs) when it fails.
make_work_dir() {
  work=${2:-}
  if [[ -z "$work" ]]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpt2gen-$1.XXXXXX")
    # shellcheck disable=SC2064  # expand now: $work and the name are fixed
    trap "status=\$?; if [[ \$status == 0 ]]; then rm -rf '$work'; else echo '$1: kept $work'; fi" EXIT
  fi
  mkdir -p "$work"
}

# install_private ROOT SITE [pip --config-settings...] builds gpt2gen from ROOT into the folder
# SITE (never the global site-packages), then adds the package's runtime dependencies
# (pyproject.toml) there where the interpreter lacks them.
install_private() {
  local root=$1 site=$2
  shift 2
  # With the build tools installed, without build isolation (fast, offline); otherwise pip
  # fetches them into an isolated build environment.
  local isolation=(--no-build-isolation)
  python - <<'PY' 2>/dev/null || isolation=()
import shutil, scikit_build_core, pybind11
assert shutil.which("cmake")
PY
  rm -rf "$site"
  python -m pip install "$root" --no-deps -q --target "$site" "${isolation[@]}" "$@"
  local missing
  missing=$(python - "$root/pyproject.toml" <<'PY'
import re, sys, tomllib
from importlib import metadata
for requirement in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(requirement)
PY
)
  if [[ -n "$missing" ]]; then
    echo "== installing missing runtime dependencies: $missing"
    # shellcheck disable=SC2086
    python -m pip install -q --target "$site" $missing
  fi
}
