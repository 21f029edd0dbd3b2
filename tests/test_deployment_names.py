"""prefect.yaml declares exactly the deployments the product submits, under their names."""

from __future__ import annotations

import yaml

from deployments.apply import PREFECT_FILE
from deployments.pools import ALL_POOLS
from inference_endpoints import deployment_names


def declared() -> set[str]:
    """`flow/deployment` for each entry of prefect.yaml (a flow's name is its decorator's)."""
    names = set()
    for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]:
        module, func = d["entrypoint"].split(":")
        source = (PREFECT_FILE.parent.parent / module).read_text()
        head = source[:source.index(f"def {func}(")]
        flow = head[head.rindex('@flow(name="') + len('@flow(name="'):].split('"')[0]
        names.add(f"{flow}/{d['name']}")
    return names


def test_every_deployment_is_named_for_what_it_runs() -> None:
    names = declared()
    serve = {f"serve-endpoint/{pool.name}" for pool in ALL_POOLS if pool.name != "control-plane"}
    assert names == set(deployment_names.ALL) | serve, names
    assert not any(n.endswith("/default") for n in names)
    assert set(deployment_names.RETIRED).isdisjoint(names)
