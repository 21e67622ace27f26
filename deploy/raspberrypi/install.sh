#!/usr/bin/env bash
# Install edge-birads as a watch-folder service on Raspberry Pi OS / Debian 12 (Bookworm) or 13 (Trixie).
#
#   sudo deploy/raspberrypi/install.sh [OPTIONS] [SOURCE]
#
# SOURCE is a checkout of edge-birads (a folder with pyproject.toml) or a wheel (.whl). Default: $EDGE_BIRADS_WHEEL
# if set, else the checkout this script lives in. What it does, idempotently (safe to run again to upgrade):
#   1. a system user (default edge-birads) with no login shell;
#   2. a virtual environment in PREFIX/venv (default /opt/edge-birads) with edge-birads installed from SOURCE;
#   3. data folders in DATA (default /var/lib/edge-birads): inbox, results, done, failed;
#   4. the config file (default /etc/edge-birads/watch.conf), kept if it already exists (--force-config replaces it);
#   5. the systemd unit edge-birads-watch.service, enabled and (re)started when systemd is running;
#   6. with --dicom: the [node] extra, the DICOM receiver unit edge-birads-receive.service (C-STORE SCP into the
#      inbox, settings in the config's [receive] section) and a drop-in that lets the watch unit send reports.
# Non-interactive. Without a running systemd (a chroot, a container, an image build) step 5 installs the unit
# file and skips systemctl; `systemctl enable --now edge-birads-watch` then does the rest on the device.
# pip honours PIP_* variables, e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels for an offline install.
#
# Options:
#   --prefix DIR         install root (venv, README)                [/opt/edge-birads]
#   --data DIR           data folders                               [/var/lib/edge-birads]
#   --config FILE        config file                                [/etc/edge-birads/watch.conf]
#   --user NAME          service user                               [edge-birads]
#   --python EXE         Python 3.10+ to build the venv from        [python3]
#   --extras LIST        pip extras, comma-separated; '' for none   [dicom] (compressed DICOM decoders)
#   --system-site-packages  let the venv see apt's Python packages (e.g. python3-numpy on 32-bit Pi OS)
#   --unit-dir DIR       where the unit file goes                   [/etc/systemd/system]
#   --no-systemctl       never call systemctl
#   --no-start           enable the service but do not (re)start it
#   --no-apt             never call apt-get (default: install python3-venv with apt-get if venv is missing)
#   --no-bin-link        do not link /usr/local/bin/edge-birads to the venv's command
#   --force-config       overwrite an existing config file
#   --dicom              also the DICOM node: receiver service, [node] extra, network for sending reports
#   -h, --help           this text
set -euo pipefail

PREFIX=/opt/edge-birads
DATA=/var/lib/edge-birads
CONFIG=/etc/edge-birads/watch.conf
SERVICE_USER=edge-birads
PYTHON=python3
EXTRAS=${EDGE_BIRADS_EXTRAS-dicom}
SYSTEM_SITE=0
UNIT_DIR=/etc/systemd/system
USE_SYSTEMCTL=1
START=1
USE_APT=1
BIN_LINK=1
FORCE_CONFIG=0
DICOM=0
SOURCE=${EDGE_BIRADS_WHEEL:-}
UNIT_NAME=edge-birads-watch.service
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
        --data) DATA=${2:?--data needs a value}; shift 2 ;;
        --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
        --user) SERVICE_USER=${2:?--user needs a value}; shift 2 ;;
        --python) PYTHON=${2:?--python needs a value}; shift 2 ;;
        --extras) EXTRAS=${2?--extras needs a value}; shift 2 ;;
        --system-site-packages) SYSTEM_SITE=1; shift ;;
        --unit-dir) UNIT_DIR=${2:?--unit-dir needs a value}; shift 2 ;;
        --no-systemctl) USE_SYSTEMCTL=0; shift ;;
        --no-start) START=0; shift ;;
        --no-apt) USE_APT=0; shift ;;
        --no-bin-link) BIN_LINK=0; shift ;;
        --force-config) FORCE_CONFIG=1; shift ;;
        --dicom) DICOM=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "${ARG_SOURCE:-}" ] || die "only one SOURCE, got '$ARG_SOURCE' and '$1'"; ARG_SOURCE=$1; shift ;;
    esac
done
SOURCE=${ARG_SOURCE:-$SOURCE}
if [ "$DICOM" -eq 1 ]; then EXTRAS=${EXTRAS:+$EXTRAS,}node; fi
[ -n "$SOURCE" ] || SOURCE=$(cd "$HERE/../.." && pwd)

[ "$(id -u)" -eq 0 ] || die "run as root (sudo): it creates a user, /opt and /etc files and a systemd unit"
case "$PREFIX$DATA$CONFIG" in *' '*) die "paths with spaces are not supported in the systemd unit" ;; esac
for path in "$PREFIX" "$DATA" "$CONFIG" "$UNIT_DIR"; do
    case "$path" in /*) ;; *) die "$path: give an absolute path" ;; esac
done
if [ -d "$SOURCE" ]; then
    [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is a folder without pyproject.toml (not an edge-birads checkout)"
    SOURCE=$(cd "$SOURCE" && pwd)
elif [ -f "$SOURCE" ]; then
    case "$SOURCE" in *.whl) ;; *) die "$SOURCE is not a wheel (.whl)" ;; esac
    SOURCE=$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")
else
    die "SOURCE $SOURCE does not exist (give a checkout folder or a .whl)"
fi

# --- 1. Python and venv ---------------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt-get install python3)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); edge-birads needs Python 3.10 or newer"
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$USE_APT" -eq 1 ] && command -v apt-get >/dev/null; then
        log "python venv support missing: apt-get install python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2 || die "apt-get install python3-venv failed"
    else
        die "$PYTHON cannot create virtual environments: apt-get install python3-venv"
    fi
fi

# --- 2. user ----------------------------------------------------------------------------------------------------------
if getent passwd "$SERVICE_USER" >/dev/null; then
    log "user $SERVICE_USER exists"
else
    log "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$DATA" --no-create-home --shell /usr/sbin/nologin \
        --comment "edge-birads watch daemon" "$SERVICE_USER"
fi
SERVICE_GROUP=$(id -gn "$SERVICE_USER")

# --- 3. venv and package ----------------------------------------------------------------------------------------------
VENV=$PREFIX/venv
mkdir -p "$PREFIX"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating the virtual environment $VENV"
    venv_args=()
    [ "$SYSTEM_SITE" -eq 0 ] || venv_args+=(--system-site-packages)
    "$PYTHON" -m venv "${venv_args[@]}" "$VENV" || die "$PYTHON -m venv $VENV failed"
fi
spec=$SOURCE
[ -z "$EXTRAS" ] || spec="$SOURCE[$EXTRAS]"
log "installing $spec into $VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VENV/bin/python" -m pip install --quiet "$spec" >&2; then
    [ -n "$EXTRAS" ] || die "pip install $SOURCE failed (see above)"
    [ "$DICOM" -eq 0 ] || die "pip install $spec failed (see above); --dicom needs the [node] extra"
    log "WARNING: installing with the extras [$EXTRAS] failed; installing the core package only."
    log "WARNING: compressed (JPEG/JPEG 2000) DICOMs will then be quarantined with a message naming what to install."
    "$VENV/bin/python" -m pip install --quiet "$SOURCE" >&2 || die "pip install $SOURCE failed (see above)"
fi
[ ! -f "$HERE/README.md" ] || install -m 0644 "$HERE/README.md" "$PREFIX/README.md"
if [ "$BIN_LINK" -eq 1 ]; then
    mkdir -p /usr/local/bin
    ln -sfn "$VENV/bin/edge-birads" /usr/local/bin/edge-birads
fi

# --- 4. folders and config --------------------------------------------------------------------------------------------
# The inbox is group-writable (setgid) so that a modality's or share's account added to the group can drop files.
install -d -m 0755 -o root -g root "$DATA"
install -d -m 2775 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$DATA/inbox"
for folder in results done failed; do
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$DATA/$folder"
done
install -d -m 0755 "$(dirname "$CONFIG")"
if [ -f "$CONFIG" ] && [ "$FORCE_CONFIG" -eq 0 ]; then
    log "keeping the existing config $CONFIG (--force-config replaces it)"
else
    log "writing $CONFIG"
    sed "s|@DATA@|$DATA|g" "$HERE/watch.conf.example" >"$CONFIG.tmp"
    chmod 0644 "$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
fi

# --- 5. systemd unit --------------------------------------------------------------------------------------------------
# Writable for the service: the four folders of the config as it is now (an edited config may point elsewhere).
readwrite=$("$VENV/bin/python" - "$CONFIG" <<'EOF'
import sys
from edge_birads.watch.config import build_config
config = build_config({}, sys.argv[1])
folders = []
from edge_birads.watch.outbox import build_send_config
send = build_send_config({}, sys.argv[1], config.state)
extra = [send.outbox] if send is not None else []
for folder in (config.inbox, config.results, config.done, config.failed, config.state, config.status_file.parent, *extra):
    if not any(str(folder) == f or str(folder).startswith(f + "/") for f in folders):
        folders.append(str(folder))
print(" ".join(folders))
EOF
) || die "the config $CONFIG is not valid (see above)"
for folder in $readwrite; do  # folders an edited config added (existing ones keep their owner and mode)
    [ -d "$folder" ] || install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$folder"
done
mkdir -p "$UNIT_DIR"
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONFIG@|$CONFIG|g" -e "s|@USER@|$SERVICE_USER|g" \
    -e "s|@DATA@|$DATA|g" -e "s|@READWRITE@|$readwrite|g" "$HERE/edge-birads-watch.service" >"$UNIT_DIR/$UNIT_NAME.tmp"
chmod 0644 "$UNIT_DIR/$UNIT_NAME.tmp"
mv "$UNIT_DIR/$UNIT_NAME.tmp" "$UNIT_DIR/$UNIT_NAME"
log "installed $UNIT_DIR/$UNIT_NAME (writable: $readwrite)"
UNITS=("$UNIT_NAME")
if [ "$DICOM" -eq 1 ]; then
    inbox=$("$VENV/bin/python" -c 'import sys; from edge_birads.receive import build_receive_config; print(build_receive_config({}, sys.argv[1]).inbox)' "$CONFIG") \
        || die "the [receive] section of $CONFIG is not valid (see above)"
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONFIG@|$CONFIG|g" -e "s|@USER@|$SERVICE_USER|g" \
        -e "s|@DATA@|$DATA|g" -e "s|@INBOX@|$inbox|g" "$HERE/edge-birads-receive.service" >"$UNIT_DIR/edge-birads-receive.service.tmp"
    chmod 0644 "$UNIT_DIR/edge-birads-receive.service.tmp"
    mv "$UNIT_DIR/edge-birads-receive.service.tmp" "$UNIT_DIR/edge-birads-receive.service"
    install -d -m 0755 "$UNIT_DIR/$UNIT_NAME.d"
    install -m 0644 "$HERE/edge-birads-watch-send.conf" "$UNIT_DIR/$UNIT_NAME.d/send.conf"
    UNITS+=(edge-birads-receive.service)
    log "installed $UNIT_DIR/edge-birads-receive.service (writable: $inbox) and the watch unit's send drop-in"
fi

# --- check: the service user can load the model (sha256 checked against its card) --------------------------------
if command -v runuser >/dev/null; then
    runuser -u "$SERVICE_USER" -- "$VENV/bin/python" -c \
        'from edge_birads.classifier import Classifier; c = Classifier(); print("model", c.card.name, c.sha256[:12], "loads")' >&2 \
        || die "the installed package cannot load its model as $SERVICE_USER (see above)"
fi
"$VENV/bin/edge-birads" --version >&2

if [ "$USE_SYSTEMCTL" -eq 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    if [ "$START" -eq 1 ]; then
        systemctl enable "${UNITS[@]}"
        systemctl restart "${UNITS[@]}"
        log "service started: systemctl status edge-birads-watch; journalctl -u edge-birads-watch -f"
    else
        systemctl enable "${UNITS[@]}"
        log "service enabled, not started (--no-start): systemctl start edge-birads-watch"
    fi
elif [ "$USE_SYSTEMCTL" -eq 1 ] && command -v systemctl >/dev/null && [ "$UNIT_DIR" = /etc/systemd/system ]; then
    # No running systemd (chroot, image build): enabling only creates symlinks, which works offline.
    if systemctl enable "${UNITS[@]}" >&2; then
        log "systemd is not running here: service enabled; it starts at the next boot"
    else
        log "systemd is not running here and systemctl enable failed; on the device: systemctl enable --now edge-birads-watch"
    fi
else
    log "systemctl skipped; on the device run: systemctl daemon-reload && systemctl enable --now edge-birads-watch"
fi
log "done. Drop images into $DATA/inbox; results appear in $DATA/results. Research use only, not a diagnostic device."
