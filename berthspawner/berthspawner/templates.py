"""Volume templates: berth's `{user}`/`{server}` and DockerSpawner's names for the same things,
so that a DockerSpawner `volumes` setting means the same volumes under berth."""

import re
import string

# DockerSpawner's escaped names: the node expands `{user}`/`{server}` with the same escaping as
# DockerSpawner's default `escape` (every byte outside [a-z0-9] as `-` and two lowercase hex
# digits), so these pass through to the node, which then knows the volume's owner.
_TO_NODE = {
    "user": "{user}",
    "server": "{server}",
    "username": "{user}",
    "safe_username": "{user}",
    "escaped_username": "{user}",
    "servername": "{server}",
    "safe_servername": "{server}",
    "escaped_servername": "{server}",
}
# Expanded here, from the spawner: the node cannot know these.
_HUB_SIDE = ("raw_username", "unescaped_username", "raw_servername", "unescaped_servername", "imagename", "prefix")
KNOWN = sorted([*_TO_NODE, *_HUB_SIDE])
# A raw name may go into a volume name or path only when it cannot change its shape.
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class TemplateError(ValueError):
    """A volume template that cannot be expanded; the message names the template."""


def escape(name):
    """berthd's (and DockerSpawner's default) escaping: [a-z0-9] stay, every other byte of the
    UTF-8 encoding becomes `-` and two lowercase hex digits."""
    out = []
    for b in name.encode():
        c = chr(b)
        out.append(c if c in string.ascii_lowercase or c in string.digits else f"-{b:02x}")
    return "".join(out)


def fields(template):
    """The replacement field names in `template`."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise TemplateError(f"{template!r}: {e}") from None


def _raw(name, what, template, path):
    """A raw name where it cannot change the shape of what it goes into: in a path, any name
    that is one path component (JupyterHub users are often e-mail addresses, as DockerSpawner
    allows: /home/{raw_username} -> /home/alice@example.org); in a named volume, a name of
    Docker's volume-name characters (the node would refuse any other)."""
    if not name:
        return name
    if path:
        if "/" not in name and "\0" not in name and name not in (".", ".."):
            return name
        why = "is not one path component"
    elif _PLAIN.match(name):
        return name
    else:
        why = "has characters a Docker volume name cannot hold"
    raise TemplateError(
        f"{template!r}: {{{what}}} is {name!r}, which {why}; use the escaped {{username}}/{{servername}} instead"
    )


def source(template, user="", server="", image="", prefix="jupyter", path=None):
    """A volume source as the node takes it: DockerSpawner's escaped names become the node's
    `{user}`/`{server}` (expanded and escaped by the node, which labels the volume with its
    owner); raw names and `{imagename}` are expanded here. Unknown names are a TemplateError."""
    values = {}
    path = template.startswith("/") if path is None else path
    for f in fields(template):
        if f in _TO_NODE:
            values[f] = _TO_NODE[f]
        elif f in ("raw_username", "unescaped_username"):
            values[f] = _raw(user, f, template, path)
        elif f in ("raw_servername", "unescaped_servername"):
            values[f] = _raw(server, f, template, path)
        elif f == "imagename":
            values[f] = image.replace("/", "-").replace(":", "-")
        elif f == "prefix":
            values[f] = prefix
        else:
            raise TemplateError(f"{template!r}: unknown name {{{f}}} (known: {', '.join(KNOWN)})")
    return template.format(**values) if values else template


def target(template, user="", server="", image="", prefix="jupyter"):
    """A mount point: every name expanded here (the node does not template targets), escaped
    names with the node's escaping."""
    node_side = source(template, user, server, image, prefix, path=True)
    return node_side.replace("{user}", escape(user)).replace("{server}", escape(server))
