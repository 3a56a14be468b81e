"""A real container registry on 127.0.0.1 for pull tests: Debian's `docker-registry` on a free
port with its own storage, optionally behind htpasswd; an image built from a test image plus
layers of random data, pushed there and removed from the local engine so a pull really
downloads; and a slow proxy so a pull on loopback lasts long enough to watch. The docker CLI
runs with its own DOCKER_CONFIG, so a `docker login` never touches the host's credentials.
(The Rust twin is daemon/tests/common/registry.rs.)"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from conftest import docker, free_port, wait_for

REGISTRY_BIN = "/usr/bin/docker-registry"


class Registry:
    def __init__(self, auth=None):
        assert os.path.exists(REGISTRY_BIN), "apt-get install docker-registry (tests/e2e/setup does)"
        self.dir = tempfile.mkdtemp(prefix="berth-registry-")
        self.port = free_port()
        self.auth = auth
        auth_yaml = ""
        if auth:
            out = subprocess.run(["htpasswd", "-Bbn", *auth], capture_output=True, check=True).stdout
            path = os.path.join(self.dir, "htpasswd")
            with open(path, "wb") as f:
                f.write(out)
            auth_yaml = f"auth:\n  htpasswd:\n    realm: berth-test\n    path: {path}\n"
        self.config = os.path.join(self.dir, "config.yml")
        with open(self.config, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {self.dir}/storage\n  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n{auth_yaml}"
            )
        self.log = open(os.path.join(self.dir, "registry.log"), "a")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config], stdout=self.log, stderr=subprocess.STDOUT)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for("the registry to listen", up, 20, 0.1)

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def push_image(registry, base, layers=3, mib=3):
    """Builds `base` plus `layers` layers of `mib` MiB of random data, pushes it to `registry`
    as a unique repository, removes it from the local engine; returns (reference, repo, sizes of
    the layers a pull downloads)."""
    ctx = tempfile.mkdtemp(prefix="berth-pull-image-")
    cfg = os.path.join(ctx, "docker-config")
    os.makedirs(cfg)
    env = {**os.environ, "DOCKER_CONFIG": cfg}
    try:
        lines = [f"FROM {base}"]
        for i in range(layers):
            with open(os.path.join(ctx, f"blob{i}"), "wb") as f:
                f.write(os.urandom(mib << 20))
            lines.append(f"COPY blob{i} /tmp/berth-blob{i}")
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write("\n".join(lines) + "\n")
        repo = f"berth-e2e-pull-{secrets.token_hex(4)}"
        ref = f"{registry.host}/{repo}:1"

        def cli(*args, stdin=None):
            r = subprocess.run(["docker", *args], env=env, input=stdin, capture_output=True, text=True)
            assert r.returncode == 0, f"docker {args}: {r.stdout}{r.stderr}"

        cli("build", "-q", "-t", ref, ctx)
        if registry.auth:
            cli("login", registry.host, "-u", registry.auth[0], "--password-stdin", stdin=registry.auth[1])
        cli("push", ref)
        cli("rmi", ref)
        base_layers = int(docker("image", "inspect", base, "--format", "{{len .RootFS.Layers}}"))
        manifest = subprocess.run(
            [
                "curl",
                "-sf",
                "-H",
                "Accept: application/vnd.docker.distribution.manifest.v2+json",
                *(["-u", ":".join(registry.auth)] if registry.auth else []),
                f"http://{registry.host}/v2/{repo}/manifests/1",
            ],
            capture_output=True,
            check=True,
        ).stdout
        sizes = [layer["size"] for layer in json.loads(manifest)["layers"]][base_layers:]
        return ref, repo, sizes
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


class SlowProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_port` that sends answers at most
    `bytes_per_second`. Pull `127.0.0.1:<proxy port>/<repo>:<tag>` through it."""

    def __init__(self, upstream_port, bytes_per_second):
        self.upstream = upstream_port
        self.rate = bytes_per_second
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(down, up, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, self.rate), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, rate):
        try:
            while True:
                data = src.recv(16 * 1024)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()
