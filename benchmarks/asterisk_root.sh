#!/bin/bash
# Asterisk for the calls benchmark's reference (`benchmarks/run.py calls`), on a machine without one.
#
# Debian 12 ships no Asterisk; Debian unstable does (22.x). This installs Debian unstable's into a directory tree of
# its own (debootstrap, about 400 MB), leaving the system alone; benchmarks/ladder.py runs it from there through
# chroot, on loopback, with a configuration it writes for each run. Needs root.
#
#   sudo bash benchmarks/asterisk_root.sh [DIR]    # default /opt/asterisk-root, or $CCPBX_BENCH_ASTERISK_ROOT
#
# The ladder finds the tree at the same place (CCPBX_BENCH_ASTERISK_ROOT names another). A system-wide `asterisk`,
# when there is one, is used instead and this is not needed.
set -euo pipefail
root=${1:-${CCPBX_BENCH_ASTERISK_ROOT:-/opt/asterisk-root}}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# A mirror's copy of unstable may be older than its Release file's Valid-Until; for a benchmark's reference the
# packages' signatures still hold (apt checks them), only the freshness check is lifted.
apt_opts=(-o Acquire::Check-Valid-Until=false -q)

if [ -x "$root/usr/sbin/asterisk" ]; then
    chroot "$root" /usr/sbin/asterisk -V
    exit 0
fi
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
debootstrap --variant=minbase sid "$root" "$mirror"
mount --bind /proc "$root/proc"
trap 'umount "$root/proc" || true' EXIT
chroot "$root" apt-get "${apt_opts[@]}" update
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends \
    asterisk asterisk-modules
chroot "$root" /usr/sbin/asterisk -V
