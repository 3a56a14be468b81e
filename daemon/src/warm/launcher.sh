# berth's warm launcher for images without Python (berthd passes it as `sh -c`): waits on stdin
# for its identity (see launcher.py for the lines), sets the environment and executes the
# command. Values lose trailing newlines (shell command substitution).
cwd=$(pwd)
echo "berth-launcher: ready (shell)"
complete=
while IFS=' ' read -r kind a b; do
  case "$kind" in
    e) export "$a=$(printf '%s' "$b" | base64 -d)" ;;
    a) set -- "$@" "$(printf '%s' "$a" | base64 -d)" ;;
    go) complete=1; break ;;
  esac
done
if [ -z "$complete" ] || [ "$#" -eq 0 ]; then
  echo "berth-launcher: stdin closed before a whole identity arrived" >&2
  exit 1
fi
cd "$cwd" || exit 1
exec "$@" </dev/null
