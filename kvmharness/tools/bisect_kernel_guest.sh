#!/bin/bash
# The guest side of `kvmharness bisect-kernel` (kvmharness/tools/bisect_kernel.py),
# run inside the booted kernel as `bash guest.sh STATE_DIR`.  It loads KVM, runs
# the inner command and leaves markers in STATE_DIR whose host mtimes time the
# phases: booted, kvm-loaded, inner-started, heartbeat (every HEARTBEAT_S while
# the inner command runs), inner-rc; or untestable (why) when KVM cannot be
# loaded in this kernel.
#
# STATE_DIR/params.sh, written by the host for this boot, sets:
#   VENDOR          amd or intel: the KVM vendor module the guest CPU needs
#   RELEASE         the kernel's release (uname -r)
#   KVM_KO          empty: load the kernel's own modules (modprobe); else the
#                   --modules kvm.ko to insmod, with
#   VENDOR_KO       the --modules kvm-VENDOR.ko (empty: --modules has none)
#   INNER           the inner command, an array
#   INNER_CWD       where to run it (the host's working directory)
#   CACHE           KVMHARNESS_CACHE for the inner command
#   HEARTBEAT_S     seconds between heartbeats
#   EXIT_UNTESTABLE the exit code for "cannot test" (125)
# PROC, SYS, DEV and LIB_MODULES (default /proc, /sys, /dev, /lib/modules) let a
# test run this script outside a VM.
set -u
S=$1
PROC=${PROC:-/proc}
SYS=${SYS:-/sys}
DEV=${DEV:-/dev}
LIB_MODULES=${LIB_MODULES:-/lib/modules}
# shellcheck source=/dev/null
. "$S/params.sh"
MOD=kvm_$VENDOR
if [ "$VENDOR" = amd ]; then FLAG=svm; else FLAG=vmx; fi

note() { echo "bisect-kernel[guest]: $*" >&2; }
untestable() {
    note "cannot test: $*"
    printf '%s\n' "$*" > "$S/untestable"
    sync
    exit "$EXIT_UNTESTABLE"
}

load_own() {
    note "loading $MOD nested=1 from the kernel's own modules ($LIB_MODULES/$RELEASE)..."
    local nested out
    if [ -e "$SYS/module/$MOD" ]; then
        nested=$(cat "$SYS/module/$MOD/parameters/nested" 2>/dev/null || true)
        if [ "$nested" != 1 ] && [ "$nested" != Y ] && [ -e "$SYS/module/$MOD/initstate" ]; then
            rmmod "$MOD" 2>/dev/null || true
        fi
    fi
    if [ ! -e "$SYS/module/$MOD" ]; then
        if [ ! -d "$LIB_MODULES/$RELEASE/" ]; then
            untestable "no modules for release $RELEASE in the guest ($LIB_MODULES/$RELEASE)"
        fi
        out=$(modprobe "$MOD" nested=1 2>&1) ||
            untestable "modprobe $MOD nested=1 failed on $RELEASE: $out"
    fi
}

insmod_dir() {
    local ko=$1
    shift
    local deps dep out
    deps=$(modinfo -F depends "$ko" 2>/dev/null | tr , ' ')
    for dep in $deps; do
        case $dep in kvm | "$MOD") continue ;; esac
        [ -e "$SYS/module/$dep" ] && continue
        out=$(modprobe "$dep" 2>&1) ||
            untestable "$(basename "$ko") needs $dep, which did not load: $out"
    done
    out=$(insmod "$ko" "$@" 2>&1) ||
        untestable "insmod $(basename "$ko") failed on $RELEASE: $out [dmesg: $(dmesg | tail -n 2 | tr '\n' ' ')]"
}

load_given() {
    if [ -z "$VENDOR_KO" ]; then
        untestable "--modules has no kvm-$VENDOR.ko, and the guest CPU needs $MOD"
    fi
    note "loading kvm.ko, kvm-$VENDOR.ko from --modules..."
    local m
    for m in "$MOD" kvm; do
        if [ -e "$SYS/module/$m/initstate" ]; then rmmod "$m" 2>/dev/null || true; fi
    done
    if [ -e "$SYS/module/kvm" ]; then
        untestable "this kernel's own kvm is built in or could not be unloaded"
    fi
    insmod_dir "$KVM_KO"
    insmod_dir "$VENDOR_KO" nested=1
}

uname -r > "$S/booted"
note "booted $(uname -r), guest uptime $(cut -d' ' -f1 "$PROC/uptime") s"
if ! grep -qw "$FLAG" "$PROC/cpuinfo"; then
    untestable "the guest CPU has no $FLAG flag"
fi
if [ -z "$KVM_KO" ]; then load_own; else load_given; fi
for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -c "$DEV/kvm" ] && break
    sleep 0.5
done
[ -c "$DEV/kvm" ] || untestable "KVM loaded but $DEV/kvm did not appear"
note "KVM ready: $(sed 's/^/nested=/' "$SYS/module/$MOD/parameters/nested" 2>/dev/null)"
: > "$S/kvm-loaded"
(while :; do
    date +%s > "$S/heartbeat"
    sleep "$HEARTBEAT_S"
done) < /dev/null > /dev/null 2>&1 &
heartbeat_pid=$!
export KVMHARNESS_CACHE=$CACHE
export HOME=${HOME:-/root}
cd "$INNER_CWD" 2> /dev/null || cd /
note "running: ${INNER[*]}"
: > "$S/inner-started"
"${INNER[@]}" < /dev/null
rc=$?
echo $rc > "$S/inner-rc.tmp" && mv "$S/inner-rc.tmp" "$S/inner-rc"
kill "$heartbeat_pid" 2> /dev/null  # the heartbeat must not outlive the script
sync
exit $rc
