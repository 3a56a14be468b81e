"""berthspawner: a JupyterHub Spawner that runs single-user servers on berthd nodes."""

from .spawner import BerthSpawner

__all__ = ["BerthSpawner"]
