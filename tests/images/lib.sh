# Shared by the image builders (build-singleuser.sh, build-systemd.sh); sourced, not run.
# An image is rebuilt only when its recipe changed: the recipe is a hash of the builder, this
# file and any extra inputs, kept as the image's label berth.recipe. FORCE=1 rebuilds anyway.

# The recipe hash of the calling builder ($0), this file, and the words given.
recipe_of() {
  (cat "$0" "${BASH_SOURCE[0]}"; echo "$*") | sha256sum | cut -c1-16
}

# True when image $1 exists, built by recipe $2, and FORCE is unset.
image_current() {
  local have
  have=$(docker image inspect -f '{{index .Config.Labels "berth.recipe"}}' "$1" 2>/dev/null || true)
  [ -z "${FORCE:-}" ] && [ "$have" = "$2" ]
}

# mmdebstrap, from Debian when missing.
ensure_mmdebstrap() {
  if ! command -v mmdebstrap >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null
  fi
}
