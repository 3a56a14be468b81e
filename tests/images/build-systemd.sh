#!/usr/bin/env bash
# Builds berth-test/systemd:latest with no registry: a Debian bookworm rootfs from mmdebstrap
# with systemd as its init, imported with `docker import`. tests/package boots it (privileged,
# systemd as PID 1) and installs the built .deb into it to run the packaged unit for real.
# Skips the build when the image exists and was built by this version of the script (its hash
# is a label of the image); FORCE=1 rebuilds.
set -euo pipefail
tag=${1:-berth-test/systemd:latest}
# shellcheck source=tests/images/lib.sh
. "$(dirname "$0")/lib.sh"
recipe=$(recipe_of)
if image_current "$tag" "$recipe"; then
  echo "build-systemd: $tag exists" >&2
  exit 0
fi
ensure_mmdebstrap
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
echo "build-systemd: debootstrapping bookworm with systemd" >&2
# systemd-sysv: /sbin/init; dbus: what a Debian server has, and systemctl's usual path.
# docker.io: the node's own engine, a unit of this systemd, so that berth-pin's pins (made in
# PID 1's mount namespace) and the containers' /proc/<pid> (which berth-pin checks) are where
# dockerd and berth-pin see them, as on a real node; the host's engine is outside both.
# The berth package's dependencies beyond this minimal system (procps, ca-certificates) are only
# downloaded, and
# apt's lists and cache kept: tests/package installs with `apt-get install --no-download
# ./berth_*.deb`, as an operator would, and the image is missing what the package must depend on.
mmdebstrap --quiet --variant=apt --include=systemd,systemd-sysv,dbus,docker.io --skip=cleanup/apt \
  --customize-hook='chroot "$1" apt-get install --download-only -y -qq procps ca-certificates >/dev/null' \
  bookworm "$rootfs"
# A container boots without consoles, udev or a network to wait for: mask what would only fail
# or wait there.
for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
  systemd-networkd-wait-online.service systemd-firstboot.service systemd-timesyncd.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# Stop at multi-user.target; no machine-id is fine (systemd makes a transient one at boot).
ln -sf /lib/systemd/system/multi-user.target "$rootfs/etc/systemd/system/default.target"
rm -f "$rootfs/etc/machine-id"
# The inner engine's data root is a volume of the host's (tests/package): vfs works on any file
# system, where overlay on the host's overlay or fuse-overlayfs does not; its images are tiny.
mkdir -p "$rootfs/etc/docker"
echo '{"storage-driver": "vfs"}' > "$rootfs/etc/docker/daemon.json"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change "LABEL berth.recipe=$recipe" \
  - "$tag" >/dev/null
echo "build-systemd: built $tag" >&2
