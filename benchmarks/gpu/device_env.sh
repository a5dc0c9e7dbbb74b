# Sourced by the one-call scripts here (GPU machine, repository root): the carried Triton
# server (.devcarry), the wheels of .whl into /tmp/site, python_backends/ on the venv's path
# (the backend stub ignores PYTHONPATH), /tmp/site/bin on PATH, artifacts in /tmp/art.
# Only where a GPU is: .devcarry/setup.sh installs into /opt and moves the system Python's
# scipy aside, which is right on the throw-away GPU machine and wrong anywhere else.
if [ -f .devcarry/setup.sh ] && command -v nvidia-smi >/dev/null; then
  source .devcarry/setup.sh
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  SP=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  printf "/tmp/site\n$PWD/python_backends\n" > "$SP/uip-dev.pth"
fi
export PATH=/tmp/site/bin:$PATH UIP_ARTIFACTS=${UIP_ARTIFACTS:-/tmp/art}
