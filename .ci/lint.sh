#!/usr/bin/env bash
# Lint pass: ruff's checks over every Python file (rules in pyproject.toml, [tool.ruff]) and
# clang-format's over the C++ in csrc/ (style in .clang-format). Changes nothing; fails on any
# finding, naming the file and line. To fix what it finds: `ruff check --fix`, `ruff format FILE`,
# `clang-format -i FILE`.
#
#   bash .ci/lint.sh
#
# Needs ruff (pip install ".[lint]") and clang-format (apt-get install clang-format; the style
# was matched with clang-format 14, Debian 12's: other major versions may format a few constructs
# differently).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in ruff clang-format; do
  if ! command -v "$tool" > /dev/null; then
    echo "lint: $tool not found (ruff: pip install \".[lint]\"; clang-format: apt-get install clang-format)" >&2
    exit 1
  fi
done

status=0
echo "== ruff check ($(ruff --version))"
ruff check . || status=1

echo "== clang-format --dry-run -Werror ($(clang-format --version | grep -o 'version [0-9.]*'))"
mapfile -t sources < <(find csrc \( -name '*.cpp' -o -name '*.hpp' -o -name '*.cc' -o -name '*.h' \) | sort)
clang-format --dry-run -Werror "${sources[@]}" || status=1

if ((status)); then
  echo "lint: failed (see above)" >&2
fi
exit "$status"
