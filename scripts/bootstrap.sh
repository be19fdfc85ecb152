#!/usr/bin/env bash
# Prepare this machine for `make run`, `make test` and `make bench`:
#   1. install the Debian packages the project needs, when missing (apt-get);
#   2. create .venv and install the project with its development tools into it.
# Safe to run again: it only does what is missing. Works as root (CI) or with sudo.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian packages, one reason each.
DEBIAN_PACKAGES=(
  python3-venv      # venv + ensurepip for .venv (not installed by default on Debian)
  python3-dev       # headers for wheels built from source (PyAudio on the Pi)
  gcc               # idem
  mosquitto         # the real MQTT broker that tests and the demo use
  portaudio19-dev   # PortAudio headers and library for PyAudio
  systemd           # systemd-analyze, to verify the unit file in tests
  iproute2          # `ip` and network namespaces for hotspot tests
  curl              # health checks in scripts
  nftables          # real packet loss and delay for hotspot probes in test namespaces
  pulseaudio        # a real-time null sink behind the ALSA tap for PA timing tests
  libasound2-plugins # the ALSA `pulse` plugin that feeds that sink
  chromium          # the browser that Playwright drives in the web UI tests
  libsndfile1       # PA decoder, used by soundfile when pip picks its wheel without one (docs/audio.md)
  strace            # `make bench`: slows every fsync to an SD card's pace (bench_slow_disk)
)

PYTHON="${PYTHON:-python3}"
VENV=".venv"
STAMP="$VENV/.installed"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "bootstrap: need root (or sudo) to run: $*" >&2; return 1
  fi
}

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
# A Python that is not Debian's (pyenv, a CI image) brings its own venv and headers.
if [ "$(command -v "$PYTHON")" != "/usr/bin/python3" ] && "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  filtered=()
  for pkg in "${missing[@]}"; do
    case "$pkg" in python3-venv|python3-dev) ;; *) filtered+=("$pkg") ;; esac
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Python environment; reinstalled when pyproject.toml changes.
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "bootstrap: installing the project and its development tools into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$STAMP"
fi
