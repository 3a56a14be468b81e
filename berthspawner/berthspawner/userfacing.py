"""What the user reads of a spawn: the hub's events built from berthd's, and failures as one
sentence.

JupyterHub shows an event's `message` (or `html_message`) on the spawn page and adds it to the
Event log as one line; an event without either moves only the bar. berthd sends words only when
they say something new, so events without words are relayed as bar-only, and a message equal to
the last one relayed is not repeated.

On a failure the hub shows `jupyterhub_message` (and `jupyterhub_html_message`) of the
exception when set, and otherwise `str(exception)`, which for a SpawnException reads
"500 SpawnException(reason=image): <log message>" with whatever Docker said. So every failure
raised to the hub carries its user sentence there, and its detail only in the log message (the
hub's log) and, from berthd, in the Event log.
"""

import html

from ._compat import SpawnException

# One sentence per failure: what happened and what to do; no Docker, network or class names.
PULL_FAILED = (
    "The software image of your server could not be downloaded; please try again in a few minutes, "
    "and if it keeps failing, tell your administrator."
)
START_FAILED = (
    "Your server stopped while it was starting; please try again, and if it keeps happening, tell your administrator."
)
NO_ROOM = "There is no room for your server right now; please try again in a few minutes."
IMAGE_MISSING = (
    "The software image of your server is not available on the machines that could run it; "
    "please tell your administrator."
)


def failure(sentence, *, reason, status_code=500, detail=""):
    """A SpawnException whose page text is `sentence` and whose `detail` goes to the hub's log."""
    e = SpawnException(
        sentence,
        reason=reason,
        log_message=detail or sentence,
        message_html=html.escape(sentence),
        status_code=status_code,
    )
    # Read before JupyterHub 6 (and by 6 where set): the user's text, never the detail.
    e.jupyterhub_message = sentence
    e.jupyterhub_html_message = html.escape(sentence)
    return e


def hub_event(ev, last_message):
    """The hub's event for berthd's ProgressEvent `ev`, or None when it says nothing: its words
    (as HTML with line breaks kept when there are several lines, e.g. a crashed server's last
    output) unless empty or a repeat of `last_message`, and its bar."""
    out = {}
    message = ev.message.strip("\n")
    if message and message != last_message:
        out["message"] = message
        if "\n" in message:
            out["html_message"] = "<br>".join(html.escape(line) for line in message.split("\n"))
    if ev.progress:
        out["progress"] = ev.progress
    return out or None
