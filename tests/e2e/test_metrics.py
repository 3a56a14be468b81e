"""berthd's /metrics read by the real Prometheus parsers while a real JupyterHub spawns on it."""

import os

import requests
from conftest import TINY, Berthd, Hub, free_port, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

USERS = ("metrics-a", "metrics-b")


def scrape(port):
    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/openmetrics-text"), r.headers
    return r.text


def samples(text):
    """{(sample name, frozen labels): value} as the classic text parser reads them; the
    strict OpenMetrics parser must accept the same text."""
    list(openmetrics_families(text))
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def spawn_count(values, status="success"):
    return values[("berthd_server_spawn_duration_seconds_count", frozenset({("status", status)}))]


def test_metrics_parse_and_count_the_hubs_spawns(workdir):
    base = os.path.join(workdir, "metrics")
    port = free_port()
    with Berthd("metrics", base, f'[metrics]\nlisten = "127.0.0.1:{port}"\n') as node:
        before = samples(scrape(port))
        assert spawn_count(before) == 0 and spawn_count(before, "failure") == 0
        extra = 'c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]'
        with Hub(base, [node], extra=extra) as hub:
            for user in USERS:
                hub.spawn(user, options={"image": TINY})
            after = samples(scrape(port))
            assert spawn_count(after) == len(USERS), after
            assert after[("berthd_running_servers", frozenset())] == len(USERS)
            # JupyterHub's buckets, cumulative: +Inf holds every spawn.
            inf = ("berthd_server_spawn_duration_seconds_bucket", frozenset({("status", "success"), ("le", "+Inf")}))
            assert after[inf] == len(USERS), after
            r = hub.api("DELETE", f"/users/{USERS[0]}/server")
            assert r.status_code in (202, 204), r.text
            wait_for("the stop", lambda: hub.server(USERS[0]) is None)
            stop_ok = ("berthd_server_stop_duration_seconds_count", frozenset({("status", "success")}))
            running = ("berthd_running_servers", frozenset())
            # The hub may call the server gone before berthd's Stop reply reached it.
            stopped = wait_for(
                "the stop in /metrics",
                lambda: (v := samples(scrape(port)))[stop_ok] >= 1 and v[running] == len(USERS) - 1 and v,
                30,
            )
            assert spawn_count(stopped) == len(USERS), stopped
            starts = [
                v
                for (name, labels), v in stopped.items()
                if name.startswith("berthd_grpc_requests")
                and ("method", "berth.v1.Spawner/Start") in labels
                and ("code", "OK") in labels
            ]
            assert starts and starts[0] >= len(USERS), stopped
