"""What the user reads: failures as one sentence, events as the hub shows them."""

import grpc
from fakes import GIB, FakeNode, spawner

try:
    from jupyterhub.utils import format_exception
except ImportError:  # JupyterHub before 5 reads the same two attributes in its handlers

    def format_exception(e):
        message = getattr(e, "jupyterhub_message", None) or str(e)
        return message, getattr(e, "jupyterhub_html_message", None) or message


from test_spawner import run, up

from berthspawner import userfacing
from berthspawner._proto.berth.v1 import spawner_pb2 as pb

INTERNALS = ("SpawnException", "reason=", "dial tcp", "lookup", ":53", "no such host", "registry-1", "exit code")


def one_sentence(text):
    return text[:1].isupper() and text.endswith(".") and text.count(". ") == 0


@run
async def test_a_failed_pull_reads_as_one_sentence_and_keeps_dockers_words_for_the_log():
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b"))
    a.fail["Start"] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        'cannot pull image "x:1" on node "a": dial tcp: lookup registry-1.docker.io on 10.0.0.2:53: no such host',
        "IMAGE_PULL_FAILED",
        {"image": "docker.io/library/x:1", "cause": "registry_unreachable"},
    )
    s = spawner([a, b])
    try:
        await s.start()
        raise AssertionError("the start succeeded")
    except Exception as e:  # noqa: BLE001 - the hub's own reading of it follows
        message, html_message = format_exception(e)
        assert message == userfacing.PULL_FAILED and one_sentence(message), message
        assert html_message == message, html_message
        assert not any(w in message for w in INTERNALS), message
        # The detail is the hub's log line (SpawnException's log_message).
        assert "no such host" in str(e)


@run
async def test_a_crashed_server_and_no_room_read_as_one_sentence_each():
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b", max_servers=1, running=1))
    a.fail["Start"] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "exited during start with exit code 1",
        "EXITED_DURING_START",
    )
    for nodes, want in (([a], userfacing.START_FAILED), ([b], userfacing.NO_ROOM)):
        try:
            await spawner(nodes).start()
            raise AssertionError("the start succeeded")
        except Exception as e:  # noqa: BLE001
            message, _ = format_exception(e)
            assert message == want and one_sentence(message), message
            assert not any(w in message for w in INTERNALS), message


def test_wordless_and_repeated_events_move_only_the_bar_and_line_breaks_are_kept():
    ev = pb.ProgressEvent
    assert userfacing.hub_event(ev(progress=30), "x") == {"progress": 30}
    assert userfacing.hub_event(ev(progress=31, message="x"), "x") == {"progress": 31}
    assert userfacing.hub_event(ev(message="x"), "x") is None
    assert userfacing.hub_event(ev(progress=5, message="Pulling"), "") == {"message": "Pulling", "progress": 5}
    out = userfacing.hub_event(ev(message="What went wrong: exit 1; last output:\n<a> 1\nb 2\n"), "")
    assert out["message"] == "What went wrong: exit 1; last output:\n<a> 1\nb 2"
    assert out["html_message"] == "What went wrong: exit 1; last output:<br>&lt;a&gt; 1<br>b 2"
