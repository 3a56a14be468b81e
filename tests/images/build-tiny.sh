#!/usr/bin/env bash
# Builds berth-test/tiny:latest with no registry: a rootfs holding Debian's busybox-static,
# imported with `docker import`. Its default command is a small HTTP server on port 8888.
set -euo pipefail
tag=${1:-berth-test/tiny:latest}
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "build-tiny: installing busybox-static" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,www,tmp,etc}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
echo '<html><body>berth tiny server</body></html>' > "$rootfs/www/index.html"
echo 'root:x:0:0:root:/:/bin/sh' > "$rootfs/etc/passwd"
chmod 1777 "$rootfs/tmp"
tar -C "$rootfs" -c . | docker import \
  --change 'CMD ["/bin/httpd", "-f", "-v", "-p", "8888", "-h", "/www"]' \
  --change 'ENV PATH=/bin' \
  - "$tag" >/dev/null
echo "build-tiny: built $tag" >&2
