"""Profiles (KubeSpawner's `profile_list`, with `berth_override`): checking the list, finding the
user's choice, and applying its overrides to a spawner for one start. A KubeSpawner list works
as written: its `kubespawner_override` keys that mean something here are read as berth's
(`KUBESPAWNER_KEYS`), any other is refused by name at config load, and an option's
`unlisted_choice` (a free value, checked by its `validation_regex`) is offered as there."""

import copy
import inspect
import re

PROFILE_KEYS = {
    "display_name",
    "slug",
    "description",
    "default",
    "berth_override",
    "kubespawner_override",
    "profile_options",
}
OPTION_KEYS = {"display_name", "choices", "unlisted_choice"}
CHOICE_KEYS = {"display_name", "default", "berth_override", "kubespawner_override"}
UNLISTED_KEYS = {
    "enabled",
    "display_name",
    "display_name_in_choices",
    "validation_regex",
    "validation_message",
    "berth_override",
    "kubespawner_override",
}
# The user_options value (and form choice) that picks an option's unlisted choice, and the key
# suffix of the value typed in (KubeSpawner's names).
UNLISTED = "unlisted-choice"
# KubeSpawner's override keys that mean the same here: key -> BerthSpawner trait.
KUBESPAWNER_KEYS = {
    "image": "image",
    "image_pull_policy": "pull_policy",
    "cpu_limit": "cpu_limit",
    "cpu_guarantee": "cpu_guarantee",
    "mem_limit": "mem_limit",
    "mem_guarantee": "mem_guarantee",
    "node_selector": "node_selector",
    "environment": "environment",
    "cmd": "cmd",
    "args": "args",
    "default_url": "default_url",
    "start_timeout": "start_timeout",
}
# Extended resources KubeSpawner asks for that berth counts: the GPUs of `gpu_class`.
GPU_RESOURCES = {"nvidia.com/gpu", "amd.com/gpu"}
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ProfileError(ValueError):
    """A profile list that cannot be used (the operator's) or a choice that is not in it (the
    user's, `user_error`); the message names the profile, option or key."""

    def __init__(self, message, user_error=False):
        super().__init__(message)
        self.user_error = user_error


def slugify(name):
    """A slug from a display name: lowercase words joined by `-`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "profile"


def _check_keys(where, entry, allowed):
    if not isinstance(entry, dict):
        raise ProfileError(f"{where} must be a dict, not {type(entry).__name__}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(allowed))}")
    override = entry.get("berth_override", {})
    if not isinstance(override, dict):
        raise ProfileError(f"{where}: berth_override must be a dict of BerthSpawner options")
    if "kubespawner_override" in entry:
        # Read once, here: berth's own override wins over the translated one.
        entry["berth_override"] = {**from_kubespawner(where, entry.pop("kubespawner_override")), **override}


def from_kubespawner(where, override):
    """A `kubespawner_override` as berth's override; a key without a meaning here is a
    ProfileError naming it."""
    if not isinstance(override, dict):
        raise ProfileError(f"{where}: kubespawner_override must be a dict")
    out = {}
    for key, value in override.items():
        if key in KUBESPAWNER_KEYS:
            out[KUBESPAWNER_KEYS[key]] = value
        elif key in ("extra_resource_limits", "extra_resource_guarantees") and isinstance(value, dict):
            other = sorted(set(value) - GPU_RESOURCES)
            if other:
                raise ProfileError(
                    f"{where}: kubespawner_override {key} {other[0]!r} has no meaning here (berth counts GPUs: "
                    f"{', '.join(sorted(GPU_RESOURCES))})"
                )
            if value:
                out["gpus"] = max(int(v) for v in value.values())
        else:
            raise ProfileError(
                f"{where}: kubespawner_override key {key!r} has no meaning here; berth reads "
                f"{', '.join(sorted([*KUBESPAWNER_KEYS, 'extra_resource_limits']))} (or use berth_override)"
            )
    return out


def _check_option(where, option):
    _check_keys(where, option, OPTION_KEYS)
    choices = option.get("choices")
    if not isinstance(choices, dict) or not choices:
        raise ProfileError(f"{where}: choices must be a non-empty dict")
    for key, choice in choices.items():
        _check_keys(f"{where} choice {key!r}", choice, CHOICE_KEYS)
    unlisted = option.get("unlisted_choice")
    if unlisted is not None:
        _check_keys(f"{where} unlisted_choice", unlisted, UNLISTED_KEYS)
        try:
            re.compile(unlisted.get("validation_regex", ""))
        except re.error as e:
            raise ProfileError(f"{where} unlisted_choice: validation_regex: {e}") from None
    if not any(c.get("default") for c in choices.values()):
        next(iter(choices.values()))["default"] = True


def initialized(profile_list):
    """A checked copy of `profile_list`: slugs filled in from display names and unique, one
    default profile (the first unless one says so), one default choice per option."""
    if not isinstance(profile_list, (list, tuple)):
        raise ProfileError(f"profile_list must be a list of dicts, not {type(profile_list).__name__}")
    profiles = copy.deepcopy(list(profile_list))
    seen = set()
    for i, p in enumerate(profiles):
        where = f"entry {i}"
        _check_keys(where, p, PROFILE_KEYS)
        if not p.get("display_name"):
            raise ProfileError(f"{where}: display_name is missing")
        p.setdefault("slug", slugify(str(p["display_name"])))
        slug = p["slug"]
        if not isinstance(slug, str) or not _SLUG.match(slug) or "--" in slug:
            raise ProfileError(f"{where}: slug {slug!r} must be letters, digits, '.', '_' or single '-'")
        if slug in seen:
            raise ProfileError(f"{where}: slug {slug!r} is used twice")
        seen.add(slug)
        options = p.get("profile_options", {})
        if not isinstance(options, dict):
            raise ProfileError(f"profile {slug!r}: profile_options must be a dict")
        for name, option in options.items():
            _check_option(f"profile {slug!r} option {name!r}", option)
    if profiles and not any(p.get("default") for p in profiles):
        profiles[0]["default"] = True
    return profiles


async def evaluate(value, spawner):
    """A list, or a callable (maybe async) taking the spawner, as its list."""
    if callable(value):
        value = value(spawner)
        if inspect.isawaitable(value):
            value = await value
    return value or []


def choose(profiles, user_options):
    """The overrides of the user's choice, in the order they apply (the profile's, then each
    option's chosen or default choice), and the option names the profile defines. No
    "profile" means the default profile. An unknown profile or choice is a user ProfileError."""
    if not profiles:
        if (user_options or {}).get("profile"):
            raise ProfileError("no profiles are offered here (profile_list is empty)", user_error=True)
        return [], set()
    opts = user_options or {}
    slug = opts.get("profile")
    if slug:
        profile = next((p for p in profiles if p["slug"] == slug), None)
        if profile is None:
            known = ", ".join(p["slug"] for p in profiles)
            raise ProfileError(f"unknown profile {slug!r}; choose one of: {known}", user_error=True)
    else:
        profile = next(p for p in profiles if p.get("default"))
    overrides = [(f"profile {profile['slug']!r}", profile.get("berth_override", {}))]
    options = profile.get("profile_options", {})
    for name, option in options.items():
        picked = opts.get(name)
        unlisted = option.get("unlisted_choice") or {}
        typed = opts.get(f"{name}--{UNLISTED}")
        if unlisted.get("enabled") and typed is not None and picked in (None, UNLISTED):
            overrides.append(_unlisted(profile["slug"], name, unlisted, typed))
            continue
        if picked is None:
            key, choice = next((k, c) for k, c in option["choices"].items() if c.get("default"))
        elif picked in option["choices"]:
            key, choice = picked, option["choices"][picked]
        else:
            known = ", ".join(option["choices"])
            raise ProfileError(
                f"profile {profile['slug']!r}: unknown {name} {picked!r}; choose one of: {known}", user_error=True
            )
        overrides.append((f"profile {profile['slug']!r} option {name}={key!r}", choice.get("berth_override", {})))
    return overrides, set(options) | {f"{n}--{UNLISTED}" for n in options}


def _unlisted(slug, name, unlisted, typed):
    """The overrides of a value typed in for an option's unlisted choice: checked against its
    `validation_regex` (a user ProfileError with its `validation_message` when it does not
    match), then put where the overrides say `{value}`."""
    if not isinstance(typed, str) or not typed:
        raise ProfileError(f"profile {slug!r}: {name} must be a non-empty string", user_error=True)
    regex = unlisted.get("validation_regex")
    if regex and not re.match(regex, typed):
        why = unlisted.get("validation_message") or f"it must match {regex}"
        raise ProfileError(f"profile {slug!r}: {name} {typed!r} is not accepted: {why}", user_error=True)

    def put(v):
        if isinstance(v, str):
            return v.replace("{value}", typed)
        if isinstance(v, dict):
            return {k: put(x) for k, x in v.items()}
        if isinstance(v, list):
            return [put(x) for x in v]
        return v

    return (f"profile {slug!r} option {name}={typed!r}", put(unlisted.get("berth_override", {})))


def restore(spawner):
    """Puts back what the last start's overrides changed: a spawner lives on between starts,
    and a profile chosen once must not leak into the next start with another profile."""
    saved = getattr(spawner, "_profile_saved", None) or {}
    for name, value in saved.items():
        setattr(spawner, name, value)
    spawner._profile_saved = {}


def apply(spawner, overrides):
    """Sets each override on the spawner: any of its traits (an unknown name is an error naming
    it); a callable is called with the spawner; a dict is merged into a dict trait (so a profile
    adds a volume or a label) rather than replacing it, a key set to None removing that entry.
    The old values are kept for `restore`."""
    saved = spawner._profile_saved
    for where, override in overrides:
        for name, value in override.items():
            if not spawner.has_trait(name) or name.startswith("_"):
                raise ProfileError(f"{where}: berth_override names {name!r}, which is not a BerthSpawner option")
            if callable(value):
                value = value(spawner)
            current = getattr(spawner, name)
            if name not in saved:
                saved[name] = copy.deepcopy(current)
            if isinstance(value, dict) and isinstance(current, dict):
                merged = {**current, **value}
                value = {k: v for k, v in merged.items() if v is not None}
            try:
                setattr(spawner, name, value)
            except Exception as e:
                raise ProfileError(f"{where}: berth_override {name}={value!r}: {e}") from None
