# Foundry launcher for run {{RUN_ID_TEXT}}.
#
# Rendered by `ledger` (the modal runner) from runners/modal/templates/launcher.py;
# its sha256 is recorded in the run's ModalJobSubmitted event, so do not edit
# it by hand. Submitted with `modal run --detach launcher.py::main`.
#
# The container runs `ledger runner train --run <id>`: the run's events reach
# the ledger over NATS when NATS_URL is set and reachable; otherwise they are
# written to an outbox file in the checkpoints Volume, which the dispatcher
# imports (verified, idempotently). The Volume is committed after every
# checkpoint and at the end, and a retried container (preemption, timeout)
# resumes from the last checkpoint committed there.
import json
import os
import subprocess
import sys
import time

import modal

RUN_ID = {{RUN_ID}}
APP_NAME = {{APP_NAME}}
GPU = {{GPU}}
TIMEOUT_S = {{TIMEOUT_S}}
RETRIES = {{RETRIES}}
DEVICE = {{DEVICE}}
LEDGER_BINARY = {{LEDGER_BINARY}}
BUNDLE = {{BUNDLE}}
KEY_FILE = {{KEY_FILE}}
CHECKPOINT_VOLUME = {{CHECKPOINT_VOLUME}}
DATA_VOLUME = {{DATA_VOLUME}}
HF_CACHE_VOLUME = {{HF_CACHE_VOLUME}}
SECRETS = {{SECRETS}}
NATS_URL = {{NATS_URL}}

# Where the container's files are. Modal mounts under /foundry; the test
# double of the `modal` CLI points FOUNDRY_CONTAINER_ROOT at a directory.
ROOT = os.environ.get("FOUNDRY_CONTAINER_ROOT", "/foundry")
MOUNT_CHECKPOINTS = "/foundry/checkpoints"
MOUNT_DATA = "/foundry/data"
MOUNT_HF_CACHE = "/foundry/hf-cache"

app = modal.App(APP_NAME)
image = (
    modal.Image.debian_slim(python_version="3.11")
    .add_local_file(LEDGER_BINARY, "/foundry/bin/ledger", copy=True)
    .add_local_file(BUNDLE, "/foundry/bundle.foundry", copy=True)
    .add_local_file(KEY_FILE, "/foundry/key.nk", copy=True)
)
checkpoints = modal.Volume.from_name(CHECKPOINT_VOLUME, create_if_missing=True)
data = modal.Volume.from_name(DATA_VOLUME, create_if_missing=True)
hf_cache = modal.Volume.from_name(HF_CACHE_VOLUME, create_if_missing=True)
retries = (
    modal.Retries(max_retries=RETRIES, initial_delay=1.0, backoff_coefficient=1.0)
    if RETRIES > 0
    else None
)


def _path(mount, *rest):
    """A path under a mount, relative to this container's root."""
    return os.path.join(ROOT, os.path.relpath(mount, "/foundry"), *rest)


def _write_status(work, status):
    tmp = os.path.join(work, "status.json.tmp")
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, os.path.join(work, "status.json"))
    checkpoints.commit()


@app.function(
    image=image,
    gpu=GPU,
    timeout=TIMEOUT_S,
    retries=retries,
    volumes={MOUNT_CHECKPOINTS: checkpoints, MOUNT_DATA: data, MOUNT_HF_CACHE: hf_cache},
    secrets=[modal.Secret.from_name(name) for name in SECRETS],
)
def train():
    work = _path(MOUNT_CHECKPOINTS, "runs", RUN_ID)
    os.makedirs(work, exist_ok=True)
    attempts_file = os.path.join(work, "attempts")
    attempt = 1
    if os.path.exists(attempts_file):
        with open(attempts_file) as f:
            attempt = int(f.read().strip() or "0") + 1
    with open(attempts_file, "w") as f:
        f.write(str(attempt))
    _write_status(work, {"state": "running", "attempt": attempt, "exit_code": None, "at": time.time()})

    env = dict(os.environ)
    env.update(
        FOUNDRY_PIN_ROOT=_path(MOUNT_DATA),
        FOUNDRY_HF_CACHE=_path(MOUNT_HF_CACHE, "hub"),
        HF_HUB_OFFLINE="1",
        FOUNDRY_TRAIN_DEVICE=DEVICE,
    )
    # The run's own key: registered by the dispatcher for this run only, and
    # expiring. Key files must not be readable by others.
    key = _path("/foundry/key.nk")
    os.chmod(key, 0o600)
    cmd = [
        _path("/foundry/bin/ledger"),
        "--key",
        key,
        "runner",
        "train",
        "--run",
        RUN_ID,
        "--bundle",
        _path("/foundry/bundle.foundry"),
        "--work",
        work,
    ]
    if NATS_URL:
        cmd += ["--nats", NATS_URL]
    print("foundry: attempt", attempt, "running", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        # `ledger runner train` says when a checkpoint (or the end) is on disk.
        if line.startswith("FOUNDRY_COMMIT"):
            checkpoints.commit()
    code = proc.wait()
    state = "succeeded" if code == 0 else "failed"
    _write_status(work, {"state": state, "attempt": attempt, "exit_code": code, "at": time.time()})
    if code != 0:
        # Raising lets Modal retry; the next attempt resumes from the Volume.
        raise RuntimeError(f"ledger runner train exited with {code}")


@app.local_entrypoint()
def main():
    call = train.spawn()
    print(f"FOUNDRY_FUNCTION_CALL_ID={call.object_id}", flush=True)
