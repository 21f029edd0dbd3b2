"""The process runtime starts its engine without privilege and without control-plane secrets.

The engine here is a stand-in shell script (not vLLM: this is a unit test of the runtime's
launch path, which is the same for any engine program): started exactly as vLLM would be,
inside the read-only mount namespace, it tries to remount its model mount read-write, to
write into it and to unmount it, and reports its capability sets and environment. The
real vLLM engine is checked the same way in tests/e2e/test_serve.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from inference_endpoints.adapters.runtime.process import can_bind_mount, start_engine
from inference_endpoints.core.serving_config import Mount, ServingSpec

# Runs as `ENGINE -m vllm.entrypoints… --host … --port …` (its arguments are ignored).
STAND_IN = r"""#!/bin/sh
model="$IE_TEST_MODEL"
out="$IE_TEST_OUT"
mount -o remount,bind,rw "$model" 2>/dev/null; remount=$?
( echo x > "$model/config.json" ) 2>/dev/null; write=$?
umount "$model" 2>/dev/null; umount_rc=$?
caps=$(grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status | tr '\t\n' ' ')
prefect=$(env | grep -c '^PREFECT_')
db=$(env | grep -c '^DATABASE_URL=')
printf '{"remount": %s, "write": %s, "umount": %s, "caps": "%s", "prefect": %s, "db": %s}\n' \
  "$remount" "$write" "$umount_rc" "$caps" "$prefect" "$db" > "$out.tmp"
mv "$out.tmp" "$out"
sleep 60
"""


@pytest.mark.skipif(not can_bind_mount(), reason="needs root and unshare to bind-mount")
def test_the_engine_cannot_remount_write_or_unmount_its_model(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "store" / "ckpt"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    engine = tmp_path / "engine.sh"
    engine.write_text(STAND_IN)
    engine.chmod(0o755)
    target = tmp_path / "mounts" / "model"
    out = tmp_path / "report.json"
    spec = ServingSpec(args=[], env={"IE_TEST_MODEL": str(target), "IE_TEST_OUT": str(out)},
                       mounts=[Mount(source="ckpt", target=str(target))], served_model_name="m",
                       model_path=str(target), api_key="k")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "ie:secret")  # what a serve run holds
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret@127.0.0.1/test")
    proc = start_engine(spec, sources={str(target): source}, host="127.0.0.1", port=9,
                        engine_python=str(engine), log_path=tmp_path / "engine.log",
                        run_dir=tmp_path / "run", mode="bind")
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and proc.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.exists(), proc.tail()
        report = json.loads(out.read_text())
    finally:
        proc.stop(grace_s=2)
    assert report["remount"] != 0, "the engine remounted its model read-write"
    assert report["write"] != 0, "the engine wrote into its model"
    assert report["umount"] != 0, "the engine unmounted its model"
    caps = dict(zip(report["caps"].split()[::2], report["caps"].split()[1::2], strict=True))
    assert caps == {"CapPrm:": "0000000000000000", "CapEff:": "0000000000000000",
                    "CapBnd:": "0000000000000000", "CapAmb:": "0000000000000000",
                    "NoNewPrivs:": "1"}, caps
    assert report["prefect"] == 0 and report["db"] == 0, "control-plane secrets reached the engine"
    assert (source / "config.json").read_text() == "{}"
    assert os.environ["PREFECT_API_AUTH_STRING"] == "ie:secret"  # only the engine's copy lost it
