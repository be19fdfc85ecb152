#!/usr/bin/env bash
# Install (or upgrade) village-gateway on a Raspberry Pi running Raspberry Pi OS
# bookworm. Run from a clone of the repository:
#
#     sudo systemd/install.sh
#
# What it does, in order:
#   1. apt-get installs what the venv build needs (python3-venv, PortAudio headers...)
#   2. creates the system user "village-gateway" (systemd-sysusers)
#   3. creates /opt/village-gateway/venv and pip-installs this repository into it
#   4. installs /etc/village-gateway/config.toml from config.example.toml, only if
#      there is no config yet (an operator's config is never overwritten)
#   5. installs the unit, the sysusers.d and the sysctl.d files
#   6. applies the sysctl, reloads systemd (warning when the kernel would not enforce
#      the unit's memory limits), enables and (re)starts the service
#
# Settings, all from the environment:
#   DESTDIR=DIR           stage everything under DIR instead of /. Nothing outside DIR is
#                         written, and steps 1, 2 and 6 are skipped (no apt-get, no user,
#                         no sysctl, no systemctl). For packaging and tests.
#   VG_EXTRAS=pi          pip extras to install; "pi" (default) adds lgpio and PyAudio.
#                         Set it empty on a machine without GPIO or sound.
#   VG_SKIP_VENV=1        skip step 3 (the venv and pip).
#   VG_SKIP_APT=1         skip step 1.
#   VG_NO_START=1         enable the service but do not start or restart it.
#   VG_PYTHON=python3     interpreter that creates the venv.
#   VG_VENV_ARGS="..."    extra arguments for "python -m venv".
#   VG_PIP_ARGS="..."     extra arguments for "pip install" (e.g. --no-index).
#   VG_CONFIG_EXAMPLE=F   the example config to install (default: config.example.toml
#                         at the repository root).
set -euo pipefail

readonly NAME=village-gateway
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly REPO

DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
VG_EXTRAS=${VG_EXTRAS-pi}
VG_SKIP_VENV=${VG_SKIP_VENV:-0}
VG_SKIP_APT=${VG_SKIP_APT:-0}
VG_NO_START=${VG_NO_START:-0}
VG_PYTHON=${VG_PYTHON:-python3}
VG_CONFIG_EXAMPLE=${VG_CONFIG_EXAMPLE:-$REPO/config.example.toml}
read -r -a VENV_ARGS <<<"${VG_VENV_ARGS:-}"
read -r -a PIP_ARGS <<<"${VG_PIP_ARGS:-}"

# Final paths on the target system; files are written to "$DESTDIR$path".
readonly PREFIX=/opt/$NAME
readonly VENV=$PREFIX/venv
readonly CONF_DIR=/etc/$NAME
readonly CONFIG=$CONF_DIR/config.toml
readonly UNIT_DIR=/etc/systemd/system
readonly SYSCTL_FILE=/etc/sysctl.d/60-$NAME-ping.conf
readonly SYSUSERS_FILE=/etc/sysusers.d/$NAME.conf
readonly BIN_LINK=/usr/local/bin/$NAME

say() { printf '%s: %s\n' "$NAME-install" "$*"; }
die() { printf '%s: error: %s\n' "$NAME-install" "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

case ${1:-} in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) die "unknown argument: $1 (settings come from the environment; see --help)" ;;
esac

staged() { [[ -n $DESTDIR ]]; }

[[ -f $VG_CONFIG_EXAMPLE ]] || die "example config not found: $VG_CONFIG_EXAMPLE"
if staged; then
    [[ $DESTDIR == /* ]] || die "DESTDIR must be an absolute path, got: $DESTDIR"
    mkdir -p -- "$DESTDIR"
else
    [[ $(id -u) -eq 0 ]] || die "run as root (sudo $0), or set DESTDIR to stage the files"
fi

# Files we install are readable by all unless said otherwise, whatever the caller's umask.
umask 022

# 1. Build prerequisites (real installs only). PyAudio has no prebuilt wheel for the
#    Pi's 64-bit OS and is compiled against PortAudio.
if ! staged && [[ $VG_SKIP_APT != 1 && $VG_SKIP_VENV != 1 ]] && command -v apt-get >/dev/null; then
    packages=(python3-venv)
    if [[ ,$VG_EXTRAS, == *,pi,* ]]; then
        packages+=(python3-dev build-essential portaudio19-dev)
    fi
    missing=()
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

# 2. The system user and group.
install -D -m 0644 -- "$SCRIPT_DIR/sysusers.d/$NAME.conf" "$DESTDIR$SYSUSERS_FILE"
if ! staged; then
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$SYSUSERS_FILE"
    elif ! getent passwd "$NAME" >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/$NAME --no-create-home \
            --shell /usr/sbin/nologin --comment "Village gateway daemon" "$NAME"
    fi
fi

# 3. The venv with the project in it. Re-running upgrades it in place.
if [[ $VG_SKIP_VENV != 1 ]]; then
    say "creating the venv in $DESTDIR$VENV"
    "$VG_PYTHON" -m venv "${VENV_ARGS[@]}" -- "$DESTDIR$VENV"
    target=$REPO
    if [[ -n $VG_EXTRAS ]]; then
        target="${REPO}[${VG_EXTRAS}]"
    fi
    say "pip install $target"
    "$DESTDIR$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade \
        "${PIP_ARGS[@]}" -- "$target"
fi
# A stable command name for operators: village-gateway check-config ...
mkdir -p -- "$DESTDIR$(dirname -- "$BIN_LINK")"
ln -sfn -- "$VENV/bin/$NAME" "$DESTDIR$BIN_LINK"
install -D -m 0644 -- "$REPO/docs/operations.md" "$DESTDIR$PREFIX/docs/operations.md"

# 4. Configuration: the directory holds secrets (broker password), so it is closed to
#    everyone but root and the service's group. The example is refreshed on every run
#    so an operator can compare it with the live config after an upgrade.
install -d -m 0750 -- "$DESTDIR$CONF_DIR"
install -m 0644 -- "$VG_CONFIG_EXAMPLE" "$DESTDIR$CONF_DIR/config.example.toml"
if [[ -e $DESTDIR$CONFIG ]]; then
    say "keeping the existing $CONFIG"
else
    say "installing $CONFIG from the example: edit it before relying on the service"
    install -m 0640 -- "$VG_CONFIG_EXAMPLE" "$DESTDIR$CONFIG"
fi
if ! staged; then
    chgrp -- "$NAME" "$CONF_DIR" "$CONFIG"
fi

# 5. The unit and the ping sysctl.
install -D -m 0644 -- "$SCRIPT_DIR/$NAME.service" "$DESTDIR$UNIT_DIR/$NAME.service"
install -D -m 0644 -- "$SCRIPT_DIR/sysctl.d/60-$NAME-ping.conf" "$DESTDIR$SYSCTL_FILE"

if staged; then
    say "staged under $DESTDIR; no user, sysctl or systemctl changes were made"
    exit 0
fi

# 6. Apply and start.
sysctl -q -p "$SYSCTL_FILE"
systemctl daemon-reload
# The unit's MemoryHigh=/MemoryMax= need the kernel's memory controller, which Raspberry
# Pi kernels leave off unless cmdline.txt asks for it; nothing else would say so.
controllers=/sys/fs/cgroup/cgroup.controllers
if [[ -r $controllers ]] && ! grep -qw memory "$controllers"; then
    say "warning: the kernel's memory controller is off, so the unit's memory limits are not"
    say "enforced. Add ' cgroup_enable=memory' to the line in /boot/firmware/cmdline.txt"
    say "and reboot (docs/operations.md, \"The sandbox\")."
fi
systemctl enable "$NAME.service"
if [[ $VG_NO_START == 1 ]]; then
    say "enabled; not started (VG_NO_START=1). Start it with: systemctl start $NAME"
    exit 0
fi
[[ -x $VENV/bin/$NAME ]] || die "$VENV/bin/$NAME is missing: run again without VG_SKIP_VENV"
if ! "$VENV/bin/$NAME" check-config "$CONFIG"; then
    say "the configuration has errors (listed above); the service was not (re)started."
    say "fix $CONFIG, then run: systemctl restart $NAME"
    exit 2
fi
if systemctl is-active --quiet "$NAME.service"; then
    systemctl restart "$NAME.service"
else
    systemctl start "$NAME.service"
fi
say "running; follow it with: journalctl -u $NAME -f"
