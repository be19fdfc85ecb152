#!/usr/bin/env bash
# Install (or upgrade) village-gateway on a Raspberry Pi running Raspberry Pi OS
# bookworm (Python 3.11) or trixie (3.13). Run from a clone of the repository:
#
#     sudo systemd/install.sh            on the Pi itself
#     sudo systemd/install.sh --image    in a chroot or image build (no running systemd)
#
# What it does, in order:
#   0. pre-flight: root, systemd running as PID 1 (not with --image), a supported
#      architecture (aarch64, armv7l; x86_64 for testing), Python 3.11 or newer, the
#      files to install all present. Nothing on the system changes before all pass.
#   1. apt-get installs what the venv build needs (python3-venv, PortAudio headers...)
#   2. creates the system user "village-gateway" (systemd-sysusers)
#   3. creates /opt/village-gateway/venv and pip-installs this repository into it
#   4. installs /etc/village-gateway/config.toml from config.example.toml, only if
#      there is no config yet (an operator's config is never overwritten)
#   5. installs the unit, the sysusers.d and the sysctl.d files, and under
#      /opt/village-gateway the operations guide with every doc and example it links to
#   6. applies the sysctl, reloads systemd (warning when the kernel would not enforce
#      the unit's memory limits) and enables the service. It is started (or restarted)
#      only when the config is no longer the untouched example and passes check-config:
#      the example drives pins 17/22/23/27 and would switch a wired relay board.
#   Last, it prints the web address and where the one-time setup code appears.
#
# Arguments:
#   --image               for image builders: skip the systemd check, the sysctl and the
#                         start; the service is only enabled (systemctl works offline in
#                         a chroot). The same as VG_IMAGE=1.
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
#   VG_IMAGE=1            the same as --image.
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
VG_IMAGE=${VG_IMAGE:-0}
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
# The guide an installed Pi points to (the unit's Documentation=); what it links to,
# and what those link to, is installed beside it under $PREFIX (the repository layout).
readonly GUIDE=docs/operations.md
# Architectures a Raspberry Pi OS image runs (64 and 32 bit), and this one for testing.
readonly ARCHES=(aarch64 armv7l x86_64)
readonly PYTHON_MIN=(3 11)

say() { printf '%s: %s\n' "$NAME-install" "$*"; }
die() { printf '%s: error: %s\n' "$NAME-install" "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case $arg in
        -h | --help) usage; exit 0 ;;
        --image) VG_IMAGE=1 ;;
        *) die "unknown argument: $arg (settings come from the environment; see --help)" ;;
    esac
done

staged() { [[ -n $DESTDIR ]]; }
image() { [[ $VG_IMAGE == 1 ]]; }

# The repository files a Markdown file links to (relative links only, anchors dropped),
# as paths relative to the repository.
linked_files() {
    local doc=$1 dir target
    dir=$(dirname -- "$doc")
    grep -oE '\]\([^)[:space:]]+\)' -- "$REPO/$doc" | sed -e 's/^](//' -e 's/)$//' |
        while IFS= read -r target; do
            target=${target%%#*}
            [[ -z $target || $target == *:* || $target == /* ]] && continue
            # A path outside the repository (../...) is listed too and refused below.
            realpath -m --relative-to="$REPO" -- "$REPO/$dir/$target"
        done
}

# Every file reachable from the guide through relative links, the guide first. A link
# to a folder (docs/schemas/) brings the folder's files along.
doc_files() {
    local -a queue=("$GUIDE") found=()
    local -A seen=(["$GUIDE"]=1)
    local doc link
    while ((${#queue[@]})); do
        doc=${queue[0]}
        queue=("${queue[@]:1}")
        found+=("$doc")
        [[ $doc == *.md ]] || continue
        while IFS= read -r link; do
            [[ -n ${seen[$link]:-} ]] && continue
            seen[$link]=1
            if [[ -d $REPO/$link ]]; then
                while IFS= read -r -d '' file; do
                    file=${file#"$REPO"/}
                    [[ -n ${seen[$file]:-} ]] && continue
                    seen[$file]=1
                    queue+=("$file")
                done < <(find "$REPO/$link" -maxdepth 1 -type f -print0 | sort -z)
            else
                queue+=("$link")
            fi
        done < <(linked_files "$doc")
    done
    printf '%s\n' "${found[@]}"
}

# --- 0. Pre-flight: every check before the first change -------------------------------
[[ -f $VG_CONFIG_EXAMPLE ]] || die "example config not found: $VG_CONFIG_EXAMPLE"
if staged; then
    [[ $DESTDIR == /* ]] || die "DESTDIR must be an absolute path, got: $DESTDIR"
else
    [[ $(id -u) -eq 0 ]] || die "run as root (sudo $0), or set DESTDIR to stage the files"
    # sd_booted(3): systemd is PID 1 exactly when this folder exists.
    if ! image && [[ ! -d /run/systemd/system ]]; then
        die "systemd is not running as PID 1 here, so the service cannot be enabled or" \
            "started; in a chroot or image build run: $0 --image"
    fi
fi
arch=$(uname -m)
[[ " ${ARCHES[*]} " == *" $arch "* ]] \
    || die "unsupported architecture $arch (supported: ${ARCHES[*]}; a Pi Zero or Pi 1 is too small)"
python_version=$("$VG_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
    || die "$VG_PYTHON does not run: install Python ${PYTHON_MIN[0]}.${PYTHON_MIN[1]} or newer (apt-get install python3)"
IFS=. read -r py_major py_minor <<<"$python_version"
if ((py_major < PYTHON_MIN[0] || (py_major == PYTHON_MIN[0] && py_minor < PYTHON_MIN[1]))); then
    die "$VG_PYTHON is Python $python_version; ${PYTHON_MIN[0]}.${PYTHON_MIN[1]} or newer is needed (Raspberry Pi OS bookworm or later)"
fi
# Errors inside a process substitution do not stop the script, so a bad link is caught
# by the count: every listed file must exist.
mapfile -t DOCS < <(doc_files)
((${#DOCS[@]})) || die "no documentation found under $REPO/$GUIDE"
for doc in "${DOCS[@]}"; do
    [[ $doc != ../* ]] || die "a document links outside the repository: $doc"
    [[ -f $REPO/$doc ]] || die "a linked document is missing from the repository: $doc"
done
say "pre-flight ok: $arch, Python $python_version$(image && printf ', image mode')"

if staged; then
    mkdir -p -- "$DESTDIR"
fi

# Files we install are readable by all unless said otherwise, whatever the caller's umask.
umask 022

# 1. Build prerequisites (real installs only). PyAudio has no prebuilt wheel for the
#    Pi's 64-bit OS and is compiled against PortAudio. lgpio has wheels up to Python 3.12
#    only; on trixie (3.13) it is compiled too, which needs swig.
if ! staged && [[ $VG_SKIP_APT != 1 && $VG_SKIP_VENV != 1 ]] && command -v apt-get >/dev/null; then
    packages=(python3-venv)
    if [[ ,$VG_EXTRAS, == *,pi,* ]]; then
        packages+=(python3-dev build-essential portaudio19-dev swig)
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
    # PYPI=1: where lgpio is built from source (no wheel for this Python), its setup.py
    # then links the lgpio C library it bundles, as its wheels do, instead of wanting a
    # liblgpio that plain Debian does not package. Nothing else we install reads it.
    PYPI=1 "$DESTDIR$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade \
        "${PIP_ARGS[@]}" -- "$target"
fi
# A stable command name for operators: village-gateway check-config ...
mkdir -p -- "$DESTDIR$(dirname -- "$BIN_LINK")"
ln -sfn -- "$VENV/bin/$NAME" "$DESTDIR$BIN_LINK"

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
for doc in "${DOCS[@]}"; do
    install -D -m 0644 -- "$REPO/$doc" "$DESTDIR$PREFIX/$doc"
done
say "installed ${#DOCS[@]} documents under $PREFIX (start with $PREFIX/$GUIDE)"

# The address phones use, and where the one-time code for the first password appears.
web_port=$(sed -n '/^\[web\]/,/^\[/s/^port *= *\([0-9]*\).*/\1/p' "$DESTDIR$CONFIG" | head -n 1)
web_port=${web_port:-8080}
finish() {
    local address=""
    if ! staged && ! image; then
        address=$(hostname -I 2>/dev/null | awk '{print $1}') || true
    fi
    if [[ -n $address ]]; then
        say "web UI: http://$address:$web_port/ or http://$(hostname).local:$web_port/"
    else
        say "web UI: http://<the Pi's address>:$web_port/ (or http://<its hostname>.local:$web_port/)"
    fi
    say "until a web password is set, the daemon logs a one-time setup code when it starts:"
    say "  journalctl -u $NAME | grep web.setup_code     (or set one: sudo $NAME set-password)"
}

if staged; then
    say "staged under $DESTDIR; no user, sysctl or systemctl changes were made"
    finish
    exit 0
fi

if image; then
    # systemctl only creates the [Install] links here: nothing runs in a chroot. The sysctl
    # file is applied by systemd-sysctl at the first boot.
    systemctl enable "$NAME.service"
    say "image mode: enabled, not started; it starts at the next boot"
    finish
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
    finish
    exit 0
fi
if cmp -s -- "$CONFIG" "$CONF_DIR/config.example.toml"; then
    say "enabled; NOT started: $CONFIG is still the example, which drives pins 17, 22, 23"
    say "and 27 and would switch a wired relay board. Edit it, check it, then start:"
    say "  village-gateway check-config $CONFIG && systemctl start $NAME"
    finish
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
finish
