#!/usr/bin/env bash
# Builds berth-test/singleuser:latest with no registry: a Debian bookworm rootfs from
# mmdebstrap, JupyterHub's single-user server pip-installed into it, imported with
# `docker import`. JupyterLab is included so a person trying ./scripts/demo lands in a UI.
# Skips the build when the image exists and was built by this version of the script (its hash
# is a label of the image); FORCE=1 rebuilds.
set -euo pipefail
tag=${1:-berth-test/singleuser:latest}
hub_version=${JUPYTERHUB_VERSION:-6.1.1}
# shellcheck source=tests/images/lib.sh
. "$(dirname "$0")/lib.sh"
recipe=$(recipe_of "$hub_version")
if image_current "$tag" "$recipe"; then
  echo "build-singleuser: $tag exists" >&2
  exit 0
fi
ensure_mmdebstrap
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
echo "build-singleuser: debootstrapping bookworm" >&2
mmdebstrap --quiet --variant=apt --include=python3,ca-certificates bookworm "$rootfs"
site=$rootfs/usr/local/lib/python3.11/dist-packages
echo "build-singleuser: installing jupyterhub==$hub_version, jupyter-server and jupyterlab" >&2
python3 -m pip install --quiet --no-warn-script-location --disable-pip-version-check --root-user-action=ignore --target "$site" \
  "jupyterhub==$hub_version" jupyter-server jupyterlab
# Console scripts land in <target>/bin with the build host's interpreter in their shebang.
mkdir -p "$rootfs/usr/local/bin"
for f in "$site"/bin/*; do
  sed -i '1s|^#!.*python.*|#!/usr/bin/python3|' "$f"
  mv "$f" "$rootfs/usr/local/bin/"
done
rmdir "$site/bin"
# Data files (JupyterLab's assets and its server-extension switch) land under <target>/share and
# <target>/etc, where Jupyter does not look: move them to /usr/local, where it does.
for d in share etc; do
  if [ -d "$site/$d" ]; then
    mkdir -p "$rootfs/usr/local/$d"
    cp -a "$site/$d/." "$rootfs/usr/local/$d/"
    rm -rf "${site:?}/$d"
  fi
done
# An unprivileged user, as jupyter-server refuses to run as root.
echo 'jovyan:x:1000:100:jovyan:/home/jovyan:/bin/sh' >> "$rootfs/etc/passwd"
mkdir -p "$rootfs/home/jovyan"
chown 1000:100 "$rootfs/home/jovyan"
tar -C "$rootfs" -c . | docker import \
  --change 'USER jovyan' \
  --change 'WORKDIR /home/jovyan' \
  --change 'ENV HOME=/home/jovyan PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'CMD ["jupyterhub-singleuser"]' \
  --change "LABEL berth.recipe=$recipe" \
  - "$tag" >/dev/null
echo "build-singleuser: built $tag" >&2
