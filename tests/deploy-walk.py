"""docs/deploy.md's node configuration applied as the page says, for tests/package: the TOML
block after "give these keys these values" is read, and each of its keys is changed in place in
the installed /etc/berth/config.toml (the page says every one is already there with its
default). A key of the page that is not in the installed file fails the walk: the page and the
package disagree.

Usage: deploy-walk.py DEPLOY_MD INSTALLED_TOML > EDITED_TOML"""

import re
import sys

deploy, installed = sys.argv[1:3]
page = open(deploy).read()
anchor = page.index("give these keys these values")
block = re.search(r"```toml\n(.*?)```", page[anchor:], re.S).group(1)

# (section, key) -> the page's line, comments dropped.
wanted = {}
section = ""
for line in block.splitlines():
    code = re.sub(r"\s+#.*$", "", line).strip()
    if not code:
        continue
    m = re.fullmatch(r"\[([a-z_.]+)\]", code)
    if m:
        section = m.group(1)
        continue
    key = code.split("=", 1)[0].strip()
    wanted[(section, key)] = code

out, section, done = [], "", set()
for line in open(installed).read().splitlines():
    m = re.fullmatch(r"\[([a-z_.]+)\]\s*", line)
    if m:
        section = m.group(1)
    # The default file has node_id commented out (each node sets its own).
    m = re.match(r"^(?:# )?([a-z_]+) = ", line)
    if m and (section, m.group(1)) in wanted and (section, m.group(1)) not in done:
        out.append(wanted[(section, m.group(1))])
        done.add((section, m.group(1)))
        continue
    out.append(line)
missing = sorted(set(wanted) - done)
if missing:
    sys.exit(f"deploy-walk: deploy.md sets keys the installed file does not have: {missing}")
print("\n".join(out))
print(f"deploy-walk: {len(done)} keys of deploy.md applied in place", file=sys.stderr)
