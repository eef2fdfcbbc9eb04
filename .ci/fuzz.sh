#!/usr/bin/env bash
# Fuzzing pass: builds gpt2gen into a private directory (never the global site-packages), runs
# tests/test_fuzz.py with GPT2GEN_FUZZ=1 (the large Hypothesis profile: tens of thousands of
# examples per property, a fixed seed, a 10 s deadline per example), then each atheris
# (libFuzzer) harness of that file for a fixed time. Fails on any failing property, any crash, or
# a run that outlives its time bound.
#
#   bash .ci/fuzz.sh [extra pytest args]
#
# Environment (all optional):
#   GPT2GEN_FUZZ_SEED      Hypothesis seed (default 20251125); change it to explore further
#   GPT2GEN_FUZZ_BUDGET    seconds the Hypothesis part may take before it counts as hung (1500)
#   GPT2GEN_ATHERIS_SECONDS  seconds per atheris harness (default 60; 0 skips atheris)
#   GPT2GEN_FUZZ_DIR       build/work directory (default: a temporary one, removed afterwards)
#   GPT2GEN_FUZZ_ASAN=1    build with -DGPT2GEN_SANITIZE=ON and run the Hypothesis part under
#                          ASan/UBSan (about 2-3x slower; atheris is then skipped, its libFuzzer
#                          runtime does not mix with gcc's ASan)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
start=$SECONDS
seed=${GPT2GEN_FUZZ_SEED:-20251125}
budget=${GPT2GEN_FUZZ_BUDGET:-1500}
atheris_seconds=${GPT2GEN_ATHERIS_SECONDS:-60}
asan_mode=${GPT2GEN_FUZZ_ASAN:-0}

source "$root/.ci/private_build.sh"
make_work_dir fuzz "${GPT2GEN_FUZZ_DIR:-}"
site=$work/site

flags=(--config-settings=build-dir="$work/build")
if [[ "$asan_mode" == 1 ]]; then
  flags+=(--config-settings=cmake.define.GPT2GEN_SANITIZE=ON --config-settings=cmake.build-type=RelWithDebInfo)
fi
echo "== building gpt2gen into $site$([[ "$asan_mode" == 1 ]] && echo " (ASan+UBSan)")"
install_private "$root" "$site" "${flags[@]}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

preload=()
if [[ "$asan_mode" == 1 ]]; then
  mkdir -p "$work/reports"
  preload=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)")
  # Leaks off: CPython's own allocations at exit are not freed (see .ci/sanitize.sh).
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$work/reports/asan"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$work/reports/ubsan"
  export GPT2GEN_SANITIZED=1
fi
where=$("${preload[@]}" python -c "import gpt2gen; print(gpt2gen.__file__)")
[[ "$where" == "$site"/* ]] || { echo "fuzz: gpt2gen imports from $where, not from $site"; exit 1; }

# --- Hypothesis, large profile. Only the properties: the bug regression tests (test_b*) run in
# the normal suite.
echo "== hypothesis: GPT2GEN_FUZZ=1, seed $seed, at most $budget s"
set +e
GPT2GEN_FUZZ=1 timeout --signal=INT --kill-after=30 "$budget" "${preload[@]}" \
  python -m pytest -p no:cacheprovider -q tests/test_fuzz.py -k "not test_b" \
  --hypothesis-seed="$seed" --hypothesis-show-statistics --durations=0 "$@" 2>&1 | tee "$work/hypothesis.log"
status=${PIPESTATUS[0]}
set -e
if [[ "$status" == 124 || "$status" == 130 ]]; then
  echo "fuzz: the Hypothesis pass did not finish within $budget s"
  exit 1
fi
if [[ "$asan_mode" == 1 && -n "$(find "$work/reports" -type f)" ]]; then
  head -80 "$work"/reports/*
  echo "fuzz: FAILED: sanitizer reports above"
  exit 1
fi
[[ "$status" == 0 ]] || { echo "fuzz: FAILED (pytest exit $status)"; exit "$status"; }

# --- atheris: coverage-guided, in-process, one harness at a time.
if [[ "$atheris_seconds" == 0 || "$asan_mode" == 1 ]]; then
  echo "== atheris skipped"
else
  if ! python -c "import atheris" 2>/dev/null; then
    echo "== installing atheris into $work/atheris"
    if python -m pip install -q --target "$work/atheris" atheris; then
      export PYTHONPATH="$PYTHONPATH:$work/atheris"
    fi
  fi
  if ! python -c "import atheris" 2>/dev/null; then
    echo "fuzz: atheris is not available for $(python -V) here; the Hypothesis pass above stands alone"
  else
    for target in tokenizer safetensors generate; do
      corpus=$work/corpus/$target
      mkdir -p "$corpus" "$work/artifacts"
      echo "== atheris $target: $atheris_seconds s"
      # -timeout: one input taking 10 s is a finding (a hang); -rss_limit_mb: so is 4 GiB of memory.
      if ! timeout --kill-after=30 $((atheris_seconds + 120)) python tests/test_fuzz.py "$target" "$corpus" \
          -max_total_time="$atheris_seconds" -timeout=10 -rss_limit_mb=4096 -seed="$seed" \
          -artifact_prefix="$work/artifacts/$target-" -print_final_stats=1 >"$work/atheris-$target.log" 2>&1; then
        tail -25 "$work/atheris-$target.log"
        if grep -q "libFuzzer: run interrupted" "$work/atheris-$target.log"; then
          # libFuzzer's handler for a SIGINT/SIGTERM sent from outside: no input is at fault.
          echo "fuzz: FAILED: atheris $target was stopped by a signal from outside after $((SECONDS - start)) s"
          exit 1
        fi
        echo "fuzz: FAILED: atheris $target; the input that failed:"
        for f in "$work"/artifacts/"$target"-*; do [[ -e "$f" ]] && { echo "$f"; xxd "$f" | head -20; }; done
        exit 1
      fi
      tail -8 "$work/atheris-$target.log"
    done
  fi
fi
echo "== fuzz pass OK in $((SECONDS - start)) s"
