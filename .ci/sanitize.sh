#!/usr/bin/env bash
# Sanitizer pass: builds the C++ extension with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option GPT2GEN_SANITIZE) into a private directory, never the global site-packages, and
# runs the fast tests against it. Fails on a failing test and on any sanitizer report, including
# one printed by a subprocess that a test started (such a report does not always fail pytest).
#
#   bash .ci/sanitize.sh [extra pytest args]
#
# Environment:
#   GPT2GEN_SANITIZE_DIR  where to build and install (default: a fresh temporary directory,
#                         removed afterwards); keep one to rebuild incrementally.
#   GPT2GEN_SANITIZE_SKIP_REFERENCE=1  make torch and transformers unimportable for the run (stub
#                         packages raising ModuleNotFoundError), so the tests comparing against
#                         them skip through importorskip.
#
# Which tests: all of tests/ except those marked `service` (a real HTTP server, browser
# or Ray cluster: third-party native code the sanitizers are not for, and minutes of run time;
# the engine they drive is covered by the scheduler's own tests here). The tests needing torch/transformers are
# kept by default because, measured here (2 cores), they are not slow under ASan: the whole suite
# took 132 s with them and ~150 s without them on a busier machine, and the torch/transformers
# subset alone takes ~20 s. They load real Hugging Face-layout checkpoints through the engine,
# which the NumPy-reference tests do not.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
start=$SECONDS

source "$root/.ci/private_build.sh"
make_work_dir sanitize "${GPT2GEN_SANITIZE_DIR:-}"
site=$work/site
build=$work/build
log=$work/pytest.log

# --- the ASan/UBSan runtimes (gcc's); the interpreter is not instrumented, so ASan must be loaded
# first, through LD_PRELOAD.
runtime() { gcc -print-file-name="$1"; }
if [[ ! -e "$(runtime libasan.so)" || ! -e "$(runtime libubsan.so)" ]]; then
  echo "== installing the sanitizer runtimes"
  gcc_major=$(gcc -dumpversion | cut -d. -f1)
  apt-get update -qq && apt-get install -y -qq "libgcc-${gcc_major}-dev" >/dev/null
fi
asan=$(runtime libasan.so)
ubsan=$(runtime libubsan.so)
for lib in "$asan" "$ubsan"; do
  [[ -e "$lib" ]] || { echo "sanitize: $lib not found (gcc's sanitizer runtime)"; exit 1; }
done

# --- build
echo "== building gpt2gen with -DGPT2GEN_SANITIZE=ON into $site"
install_private "$root" "$site" --config-settings=cmake.define.GPT2GEN_SANITIZE=ON \
  --config-settings=cmake.build-type=RelWithDebInfo --config-settings=build-dir="$build"
core=$(ls "$site"/gpt2gen/_core*.so)
if ! nm -D "$core" | grep __asan_ >/dev/null; then  # (not grep -q: SIGPIPE under pipefail)
  echo "sanitize: $core is not instrumented (GPT2GEN_SANITIZE did not take effect)"
  exit 1
fi

# --- optionally, make the reference libraries unimportable (see the header)
block=$work/blocked
rm -rf "$block"
mkdir -p "$block"
if [[ "${GPT2GEN_SANITIZE_SKIP_REFERENCE:-0}" == 1 ]]; then
  for module in torch transformers; do
    mkdir -p "$block/$module"
    echo "raise ModuleNotFoundError('$module is disabled in the sanitizer run (.ci/sanitize.sh)', name='$module')" \
      >"$block/$module/__init__.py"
  done
fi

# detect_leaks=0: CPython does not free everything it allocates at exit (interned strings,
# static types, module state), so LeakSanitizer would report thousands of "leaks" that are not
# ours. Memory growth of the engine is tested by tests/test_leaks.py instead.
# log_path: every report goes to a file of its own (name.<pid>), from pytest and from any
# subprocess a test starts alike: pytest captures fd 2 during a test and an aborting process
# never prints what was captured, and a subprocess's stderr is usually captured by the test.
reports=$work/reports
rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_init_order=1:detect_stack_use_after_return=1:log_path=$reports/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$block:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONFAULTHANDLER=1
export GPT2GEN_SANITIZED=1  # tests that cannot run under ASan (address-space limits, RSS) skip
where=$(LD_PRELOAD="$asan $ubsan" python -c "import gpt2gen; print(gpt2gen.__file__)")
case "$where" in
  "$site"/*) echo "== testing $where" ;;
  *) echo "sanitize: gpt2gen imports from $where, not from $site"; exit 1 ;;
esac

echo "== pytest under ASan+UBSan (log: $log)"
set +e
LD_PRELOAD="$asan $ubsan" python -m pytest -p no:cacheprovider -q -m "not service" \
  --durations=15 "$@" tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

files=$(find "$reports" -type f | sort)
lines=$(grep -cE "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log" || true)
echo "== sanitizer pass: pytest exit $status, $(echo "$files" | grep -c . || true) report file(s), $lines report line(s) in the output, $((SECONDS - start)) s"
if [[ -n "$files" || "$lines" != 0 ]]; then
  for f in $files; do
    echo "---- $f"
    head -80 "$f"
  done
  grep -nE -A3 "ERROR: AddressSanitizer|runtime error:" "$log" | head -60 || true
  echo "sanitize: FAILED: sanitizer reports above"
  exit 1
fi
exit "$status"
