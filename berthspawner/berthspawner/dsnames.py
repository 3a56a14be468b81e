"""DockerSpawner's meanings where they differ from JupyterHub's Spawner: `mem_limit` and
`cpu_limit` may be callables taking the spawner (evaluated when set, as DockerSpawner does), the
deprecated names (`image_whitelist`, `remove_containers`, `container_image`, with
DockerSpawner's warning), and its public methods that hooks
and tests call: `check_allowed` (and the deprecated `check_image_whitelist`) and `get_object`."""

import warnings

from jupyterhub.traitlets import ByteSpecification, Callable
from traitlets import Any, Bool, Dict, Float, List, TraitError, Unicode, Union, observe, validate
from traitlets.config import Configurable

# DockerSpawner's deprecated names: old -> (new, the DockerSpawner version that renamed it).
DEPRECATED = {
    "image_whitelist": ("allowed_images", "12.0"),
    "remove_containers": ("remove", "0.10.0"),
    "container_image": ("image", "0.9.*"),
}


def evaluated(spawner, name, value, trait):
    """A limit as DockerSpawner takes it: a callable is called with the spawner and its answer
    checked as the plain value would be. A failure is a TraitError naming the trait (and the
    user): it fails this spawner only, never the configuration other spawners are made from."""
    if callable(value):
        user = getattr(getattr(spawner, "user", None), "name", "?")
        try:
            value = value(spawner)
        except Exception as e:
            raise TraitError(f"BerthSpawner.{name}: the callable raised {e!r} for user {user!r}") from None
        if value is None:
            return None
        try:
            return trait.validate(spawner, value)
        except TraitError as e:
            raise TraitError(f"BerthSpawner.{name}: the callable returned {value!r} for user {user!r}: {e}") from None
    return value


class DockerSpawnerNames(Configurable):
    """The traits of BerthSpawner that take DockerSpawner's forms of a setting."""

    mem_limit = Union(
        [Callable(), ByteSpecification()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""Memory limit of the server: bytes, or a number with K, M, G or T; or, as in
        DockerSpawner, a callable(spawner) returning one (evaluated when the spawner is made).""",
    )
    cpu_limit = Union(
        [Callable(), Float()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""CPU limit of the server (cores); or, as in DockerSpawner, a callable(spawner)
        returning one (evaluated when the spawner is made).""",
    )
    image_whitelist = Union(
        [List(Unicode()), Dict(), Unicode(), Any()],
        default_value=[],
        config=True,
        help="Deprecated (DockerSpawner 12.0): use allowed_images.",
    )
    remove_containers = Bool(False, config=True, help="Deprecated (DockerSpawner 0.10.0): use remove.")
    container_image = Unicode("", config=True, help="Deprecated (DockerSpawner 0.9): use image.")

    @validate("mem_limit")
    def _eval_mem_limit(self, proposal):
        return evaluated(self, "mem_limit", proposal["value"], ByteSpecification(allow_none=True))

    @validate("cpu_limit")
    def _eval_cpu_limit(self, proposal):
        return evaluated(self, "cpu_limit", proposal["value"], Float(allow_none=True))

    @observe(*DEPRECATED)
    def _deprecated_trait(self, change):
        new, version = DEPRECATED[change.name]
        if getattr(self, new) != change.new:
            # DockerSpawner's warning, word for word (sites grep their logs for it); none when
            # both names say the same.
            self.log.warning(
                f"DockerSpawner.{change.name} is deprecated in DockerSpawner {version}, use DockerSpawner.{new} instead"
            )
            setattr(self, new, change.new)

    def _get_allowed_images(self):
        """`allowed_images` evaluated (a callable called with the spawner) as a dict display
        name -> image, or "*": DockerSpawner's helper, which hooks written for it call."""
        from . import form

        return form.allowed_images(self)

    async def check_allowed(self, image):
        """The image a user's choice `image` stands for, as DockerSpawner answers it; a choice
        that is not allowed is a 400."""
        from . import request

        return request.allowed_image(self, image)

    async def check_image_whitelist(self, image):
        """Deprecated (DockerSpawner 12.0): check_allowed."""
        warnings.warn(
            "check_image_whitelist is deprecated in DockerSpawner 12.0, use check_allowed instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self.check_allowed(image)
