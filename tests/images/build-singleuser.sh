#!/usr/bin/env bash
# Builds berth-test/singleuser:latest with no registry: a Debian bookworm rootfs from
# mmdebstrap, JupyterHub's single-user server pip-installed into it, imported with
# `docker import`. Skips the build when the image exists (FORCE=1 rebuilds).
set -euo pipefail
tag=${1:-berth-test/singleuser:latest}
hub_version=${JUPYTERHUB_VERSION:-6.1.1}
if [ -z "${FORCE:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "build-singleuser: $tag exists" >&2
  exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
echo "build-singleuser: debootstrapping bookworm" >&2
mmdebstrap --quiet --variant=apt --include=python3,ca-certificates bookworm "$rootfs"
site=$rootfs/usr/local/lib/python3.11/dist-packages
echo "build-singleuser: installing jupyterhub==$hub_version and jupyter-server" >&2
python3 -m pip install --quiet --no-warn-script-location --target "$site" \
  "jupyterhub==$hub_version" jupyter-server
# Console scripts land in <target>/bin with the build host's interpreter in their shebang.
mkdir -p "$rootfs/usr/local/bin"
for f in "$site"/bin/*; do
  sed -i '1s|^#!.*python.*|#!/usr/bin/python3|' "$f"
  mv "$f" "$rootfs/usr/local/bin/"
done
rmdir "$site/bin"
# An unprivileged user, as jupyter-server refuses to run as root.
echo 'jovyan:x:1000:100:jovyan:/home/jovyan:/bin/sh' >> "$rootfs/etc/passwd"
mkdir -p "$rootfs/home/jovyan"
chown 1000:100 "$rootfs/home/jovyan"
tar -C "$rootfs" -c . | docker import \
  --change 'USER jovyan' \
  --change 'WORKDIR /home/jovyan' \
  --change 'ENV HOME=/home/jovyan PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'CMD ["jupyterhub-singleuser"]' \
  - "$tag" >/dev/null
echo "build-singleuser: built $tag" >&2
