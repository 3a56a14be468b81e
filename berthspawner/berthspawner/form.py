"""The spawn form: an image picker (`allowed_images`) and a profile list (`profile_list`) as
HTML for JupyterHub's spawn page, and the form's answer turned back into `user_options`."""

from html import escape

# Form fields of a profile's options: profile-option-<profile slug>--<option name>, and
# ...--<option name>--unlisted-choice for a value typed in (KubeSpawner's names).
OPTION_PREFIX = "profile-option-"
UNLISTED = "unlisted-choice"


def single(value):
    """A form value as one string: JupyterHub hands form data over as lists of strings, and
    of a field sent more than once the first value counts (as DockerSpawner takes it)."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else ""
    return value


def images_as_dict(value):
    """`allowed_images` as DockerSpawner reads it: a list is {image: image}, a dict is
    {display name: image}, "*" allows any image; None or empty allows no choice."""
    if value is None:
        return {}
    if value == "*":
        return "*"
    if isinstance(value, (list, tuple)):
        return {str(i): str(i) for i in value}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    raise ValueError(
        f"allowed_images must be a list, a dict, '*' or a callable returning one, not {type(value).__name__}"
    )


def allowed_images(spawner):
    """The spawner's `allowed_images`, a callable evaluated with the spawner (as DockerSpawner
    does), as a dict (or "*")."""
    value = spawner.allowed_images
    if callable(value):
        value = value(spawner)
    return images_as_dict(value)


def image_picker(images, current_image):
    """A <select name="image"> of the allowed images when there is a choice, else ""."""
    if images == "*" or len(images) <= 1:
        return ""
    options = "\n".join(
        f'    <option value="{escape(name)}"{" selected" if image == current_image else ""}>{escape(name)}</option>'
        for name, image in images.items()
    )
    return (
        '<div class="form-group">\n'
        '  <label for="berth-image">Image</label>\n'
        '  <select class="form-control" id="berth-image" name="image" required>\n'
        f"{options}\n"
        "  </select>\n"
        "</div>"
    )


def _profile_options(profile, chosen):
    slug = profile["slug"]
    out = []
    for name, option in profile.get("profile_options", {}).items():
        field = f"{OPTION_PREFIX}{slug}--{name}"
        picked = chosen.get(name) if chosen.get("profile") == slug else None
        choices = "\n".join(
            f'        <option value="{escape(key)}"'
            f"{' selected' if (key == picked if picked else choice.get('default')) else ''}>"
            f"{escape(choice.get('display_name', key))}</option>"
            for key, choice in option["choices"].items()
        )
        unlisted = option.get("unlisted_choice") or {}
        free = ""
        if unlisted.get("enabled"):
            # KubeSpawner's names: the select's "unlisted-choice", and a text field beside it.
            label = unlisted.get("display_name_in_choices") or unlisted.get("display_name") or "Other"
            choices += f'\n        <option value="{UNLISTED}">{escape(label)}</option>'
            typed = chosen.get(f"{name}--{UNLISTED}", "") if chosen.get("profile") == slug else ""
            pattern = f' pattern="{escape(unlisted["validation_regex"])}"' if unlisted.get("validation_regex") else ""
            free = (
                f'\n      <input type="text" class="form-control" name="{escape(field)}--{UNLISTED}"'
                f' placeholder="{escape(unlisted.get("display_name", "Other"))}" value="{escape(typed)}"{pattern}>'
            )
        out.append(
            '    <div class="berth-profile-option">\n'
            f'      <label for="{escape(field)}">{escape(option.get("display_name", name))}</label>\n'
            f'      <select class="form-control" id="{escape(field)}" name="{escape(field)}">\n'
            f"{choices}\n"
            f"      </select>{free}\n"
            "    </div>"
        )
    return "\n".join(out)


def profile_list(profiles, user_options=None):
    """Radio buttons, one per profile (display name, description, its options), the user's last
    choice or else the default one checked."""
    chosen = user_options or {}
    last = chosen.get("profile") if any(p["slug"] == chosen.get("profile") for p in profiles) else None
    items = []
    for p in profiles:
        slug = p["slug"]
        checked = slug == last if last else p.get("default")
        description = f"\n    <p>{escape(p['description'])}</p>" if p.get("description") else ""
        options = _profile_options(p, chosen)
        items.append(
            f'  <label class="berth-profile" for="berth-profile-{escape(slug)}">\n'
            f'    <input type="radio" name="profile" id="berth-profile-{escape(slug)}" value="{escape(slug)}"'
            f"{' checked' if checked else ''}>\n"
            f"    <strong>{escape(p['display_name'])}</strong>{description}"
            + (f"\n{options}" if options else "")
            + "\n  </label>"
        )
    return '<div class="form-group" id="berth-profiles">\n' + "\n".join(items) + "\n</div>"


def render(profiles, images, current_image, user_options=None):
    """The whole form: the profile list and the image picker, each where configured."""
    parts = [profile_list(profiles, user_options) if profiles else "", image_picker(images, current_image)]
    return "\n".join(p for p in parts if p)


def to_user_options(formdata):
    """The form's answer (a dict of lists of strings) as `user_options`: {"profile": slug,
    <option name>: <choice>, "image": <display name>}. Fields of profiles other than the
    chosen one are dropped (the browser sends every select), and so are the page's own fields
    (`_xsrf`); other fields are kept as single values."""
    out = {}
    profile = single(formdata.get("profile"))
    if profile:
        out["profile"] = profile
    for key, value in formdata.items():
        if key == "profile" or key.startswith("_"):
            continue
        if key.startswith(OPTION_PREFIX):
            slug, sep, name = key[len(OPTION_PREFIX) :].partition("--")
            if sep and slug == profile:
                out[name] = single(value)
            continue
        out[key] = single(value)
    return out
