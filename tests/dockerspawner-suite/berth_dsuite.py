"""The pytest plugin that runs DockerSpawner's own test files (from its sdist, see `run`) against
berthspawner on a real berthd: the fixtures those files ask for, built on JupyterHub's own test
fixtures (jupyterhub.tests.conftest, mocking), the list of tests that are not applicable with
the reason for each, and the table of results.

What a DockerSpawner site changes is all that changes here: the spawner class (`dockerspawner`
on the path is tests/dockerspawner-suite/shim, whose DockerSpawner is BerthSpawner) and
`nodes`. The images the tests name (JupyterHub's single-user images on quay.io) are the local
test image tagged under their names: this machine reaches no registry."""

import importlib.util
import os
import secrets
import shutil
import tempfile
from unittest import mock

import jupyterhub
import pytest
from jupyterhub.tests.mocking import MockHub

from dockerspawner import DockerSpawner

# JupyterHub's own test fixtures (app, user, username, cleanup_after, ...), as its tests get them.
pytest_plugins = ["jupyterhub.tests.conftest"]

REPO = os.environ["BERTH_REPO"]
_spec = importlib.util.spec_from_file_location("e2e_fixtures", os.path.join(REPO, "tests", "e2e", "conftest.py"))
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

# The servers reach the hub where the e2e suite's do: the bridge gateway of the host engine.
MockHub.hub_ip = e2e.bridge_ip()
# The hub's proxy is Debian's configurable-http-proxy, which needs its module path.
os.environ.update(e2e.CHP_ENV)

# Tests of DockerSpawner's internals, by test id (parameters included) or by function name (all
# its parameters): why each cannot apply to another spawner. Nothing else may be skipped.
NOT_APPLICABLE = {
    "test_dockerspawner.py::test_name_collision": "DockerSpawner's container naming (object_name, prefix); berthd names containers itself",
    "test_dockerspawner.py::test_start_stop[False]": "asserts DockerSpawner's state keys (object_id, object_name) after a stop; berthd keeps a "
    "stopped container by the server's key on the node, not in the hub's state",
    "test_dockerspawner.py::test_image_pull_policy": "calls DockerSpawner's pull_image and its docker-py client (spawner.docker); berth's pulls "
    "are the node's (daemon/tests/pulls.rs, tests/e2e/test_pulls.py)",
    "test_dockerspawner.py::test_post_start": "mocks DockerSpawner's post_start_exec and get_ip_and_port (its methods); berth's "
    "post_start_cmd runs on the node (berthspawner/tests/test_options.py)",
    "test_dockerspawner.py::test_cpu_limit": "mocks DockerSpawner's docker-py client and calls its private create_object; the callable "
    "cpu_limit is test_dockerspawner_names.py::test_cpu_limit_takes_a_callable_of_the_spawner",
    "test_dockerspawner.py::test_default_host_ip_reads_env_var": "DockerSpawner's private _default_host_ip (where it publishes ports); berthd's setting",
    "test_dockerspawner.py::test_default_options_form": "DockerSpawner's private _default_options_form and its exact HTML",
    "test_dockerspawner.py::test_validate_escape": "DockerSpawner's container-name escaping (the escape trait)",
    "test_dockerspawner.py::test_legacy_escape": "DockerSpawner's container-name escaping (private _legacy_escape)",
    "test_swarmspawner.py::test_start_stop": "Swarm (SwarmSpawner, Docker services)",
    "test_systemuserspawner.py::test_start_stop": "SystemUserSpawner, another class (system users' home directories), not DockerSpawner",
}

# Outcome of each test id: "pass", "fail" or "N/A".
_results = {}
_reasons = {}


def _short(nodeid):
    """A test id from its file name on ("test_x.py::test_y[param]"): parameters may hold "/"."""
    path, _, rest = nodeid.partition("::")
    return f"{os.path.basename(path)}::{rest}"


def _not_applicable(nodeid):
    short = _short(nodeid)
    return NOT_APPLICABLE.get(short) or NOT_APPLICABLE.get(short.split("[")[0])


def pytest_collection_modifyitems(session, config, items):
    matched = set()
    for item in items:
        short = _short(item.nodeid)
        for key in (short, short.split("[")[0]):
            if key in NOT_APPLICABLE:
                matched.add(key)
                item.add_marker(pytest.mark.skip(reason=f"not applicable: {NOT_APPLICABLE[key]}"))
                break
    stale = sorted(set(NOT_APPLICABLE) - matched)
    if stale:
        raise pytest.UsageError(f"not-applicable entries match no test of the sdist: {stale}")


def pytest_runtest_logreport(report):
    nodeid = _short(report.nodeid)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if _not_applicable(report.nodeid):
            _results[nodeid] = "N/A"
            _reasons[nodeid] = _not_applicable(report.nodeid)
        elif report.passed:
            _results[nodeid] = "pass"
        else:
            # A failure, an error in setup, or any skip or xfail of an applicable test.
            _results[nodeid] = "fail"
            _reasons[nodeid] = "skipped" if report.skipped else report.longreprtext.strip().splitlines()[-1][:160]
    elif report.when == "teardown" and report.failed:
        _results[nodeid] = "fail"
        _reasons[nodeid] = "teardown: " + report.longreprtext.strip().splitlines()[-1][:160]


def table():
    """The results as a Markdown table, with the counts above it."""
    applicable = [t for t, r in _results.items() if r != "N/A"]
    passed = [t for t in applicable if _results[t] == "pass"]
    lines = [
        f"DockerSpawner {os.environ.get('BERTH_DOCKERSPAWNER_VERSION', '?')} test suite on berthspawner, "
        f"JupyterHub {jupyterhub.__version__}: {len(applicable)} applicable, {len(passed)} pass, "
        f"{len(applicable) - len(passed)} fail, {len(_results) - len(applicable)} not applicable.",
        "",
        "| test | result | why not applicable |",
        "| --- | --- | --- |",
    ]
    for t in sorted(_results):
        why = _reasons.get(t, "") if _results[t] == "N/A" else (_reasons.get(t, "") if _results[t] == "fail" else "")
        lines.append(f"| `{t}` | {_results[t]} | {why} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    text = table()
    terminalreporter.write_sep("=", "DockerSpawner's tests on berthspawner")
    terminalreporter.write_line(text)
    out = os.environ.get("BERTH_DSUITE_TABLE")
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def pytest_sessionfinish(session, exitstatus):
    if any(r == "fail" for r in _results.values()) and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def berth_node():
    """One real berthd on the host engine, and the images the tests name tagged locally."""
    e2e.require_docker()
    for tag in (
        f"quay.io/jupyterhub/singleuser:{jupyterhub.__version__}",
        "quay.io/jupyterhub/singleuser:4.0",
        "quay.io/jupyterhub/singleuser:4",
    ):
        e2e.docker("tag", e2e.IMAGE, tag)
    workdir = tempfile.mkdtemp(prefix="berth-dsuite-")
    with e2e.Berthd(f"dsuite-{secrets.token_hex(2)}", workdir) as node:
        yield node
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def dockerspawner_configured_app(app, berth_node):
    """The hub of JupyterHub's test fixtures with the site's two changes: the spawner class
    (DockerSpawner, which is BerthSpawner here) and `nodes`; named servers on, as the tests
    start one (test_start_stop)."""
    nodes = [{"name": berth_node.name, "address": berth_node.address}]
    settings = {"spawner_class": DockerSpawner, "allow_named_servers": True, "named_server_limit_per_user": 2}
    with mock.patch.dict(app.tornado_settings, settings), mock.patch.dict(app.config.DockerSpawner, {"nodes": nodes}):
        yield app
