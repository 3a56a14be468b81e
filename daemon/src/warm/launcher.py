# berth's warm launcher (berthd passes it as `python3 -c`). A warm pool container runs it before
# anyone claims the container: it imports the single-user server's modules, then waits on stdin
# for its identity: lines "e KEY BASE64VALUE" (environment), "a BASE64ARG" (the command line)
# and "go". With the identity it sets the environment and runs the server in this process when
# the command is jupyterhub-singleuser (already warm), otherwise it executes the command as a
# cold container would. It holds no secret and no user file before the claim.
import base64
import os
import sys

cwd = os.getcwd()
warmed = []
# The server and the extensions it loads at start (those present), and JupyterHub's
# single-user entry point, which chooses its implementation from two variables as it is
# imported (both unset here: a claim that sets either runs the command cold instead). Then what
# the server imports while it initialises, measured on jupyter_server 2 with JupyterLab 4
# (a third of the CPU a claimed server spent before it listened): its services' handlers,
# IPython (notebook_shim's paths import it), httpx's transport (JupyterLab's extension
# manager makes a client).
CHOOSERS = ("JUPYTERHUB_SINGLEUSER_APP", "JUPYTERHUB_SINGLEUSER_EXTENSION")
for name in (
    "jupyter_server.serverapp",
    "jupyterlab.labapp",
    "jupyter_lsp",
    "jupyter_server_terminals",
    "notebook_shim",
    "jupyterhub.services.auth",
    "jupyterhub.singleuser",
    "jupyter_server.services.api.handlers",
    "jupyter_server.services.config.handlers",
    "jupyter_server.services.contents.handlers",
    "jupyter_server.services.events.handlers",
    "jupyter_server.services.kernels.handlers",
    "jupyter_server.services.kernelspecs.handlers",
    "jupyter_server.services.nbconvert.handlers",
    "jupyter_server.services.security.handlers",
    "jupyter_server.services.sessions.handlers",
    "jupyter_server.services.shutdown",
    "jupyter_server.kernelspecs.handlers",
    "jupyter_server.nbconvert.handlers",
    "jupyter_server.view.handlers",
    "notebook_shim.nbserver",
    "jupyter_lsp.virtual_documents_shadow",
    "IPython",
    "httpcore",
    "jinja2.ext",
    "tornado.platform.asyncio",
):
    try:
        __import__(name)
        warmed.append(name)
    except Exception as e:  # noqa: BLE001 - a missing module only makes the start colder
        print(f"berth-launcher: cannot import {name} ahead ({e.__class__.__name__})", flush=True)
print(f"berth-launcher: ready ({len(warmed)} modules imported ahead)", flush=True)

env, argv, complete = {}, [], False
for line in sys.stdin.buffer:
    kind, _, rest = line.rstrip(b"\n").partition(b" ")
    if kind == b"e":
        key, _, value = rest.partition(b" ")
        env[key.decode()] = base64.b64decode(value).decode()
    elif kind == b"a":
        argv.append(base64.b64decode(rest).decode())
    elif kind == b"go":
        complete = True
        break
if not complete or not argv:
    sys.exit("berth-launcher: stdin closed before a whole identity arrived")
devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(devnull, 0)
os.close(devnull)
os.environ.update(env)
# The user's volumes were mounted after this process started: enter the directory again by
# its path to see them.
os.chdir(cwd)
warm = "jupyterhub.singleuser" in sys.modules and not any(env.get(k) for k in CHOOSERS)
if warm and os.path.basename(argv[0]) == "jupyterhub-singleuser":
    sys.argv = argv
    from jupyterhub.singleuser import main

    sys.exit(main())
os.execvp(argv[0], argv)
