"""What differs between the JupyterHub versions berthspawner supports (4.1 to 6.x), in one place.

- `SpawnException`: JupyterHub 6 has it (a `tornado.web.HTTPError` whose message the hub shows
  as is, with a `reason` label for its metrics). Before 6 the hub shows an exception's
  `jupyterhub_message` (and `jupyterhub_html_message`) when it has one, and uses an
  HTTPError's `status_code` for the page and the REST answer: the stand-in below is such an
  HTTPError with the same constructor and attributes, so the rest of berthspawner raises one
  kind of error on every version.
"""

from tornado import web

try:
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub < 6

    class SpawnException(web.HTTPError):
        """JupyterHub 6's SpawnException for older hubs: the message the user sees, a short
        `reason` label, an optional `log_message` (in str(), which the hub logs) and
        `message_html`, and the HTTP status (400 unless said)."""

        def __init__(self, message, *, reason, log_message="", message_html="", status_code=400):
            self.message = message
            self.message_html = message_html
            # What JupyterHub 4.1 and 5 show the user (pages, progress and REST errors).
            self.jupyterhub_message = message
            if message_html:
                self.jupyterhub_html_message = message_html
            # Older hubs answer the REST API with the HTTPError's log message: that must be what
            # the user may read (tornado formats it with "%" only when given args: none are).
            super().__init__(status_code, message)
            self.detail = log_message or message
            # After HTTPError's __init__, which sets `reason` to the HTTP reason phrase.
            self.reason = reason

        def __str__(self):
            return f"{self.status_code} {self.__class__.__name__}(reason={self.reason}): {self.detail}"


__all__ = ["SpawnException"]
