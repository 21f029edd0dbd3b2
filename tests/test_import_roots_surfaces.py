"""Import roots and bounded paths where people meet them: the REST API, the console form, the CLI.

The API and the form answer 422 naming the field; the CLI exits 2 with the problem and
no traceback; only the CLI manages roots. Real SQLite registry, real CLI processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.archs import write_tiny_llama
from tests.cli_support import IsolatedStack
from tests.test_console_api import World, sign_in
from tests.test_console_api import world as world  # the console test world: real SQLite registry

LONG_PATH = "/" + "/".join(["d" * 200] * 21)  # 4,221 bytes
LONG_COMPONENT = "/tmp/" + "c" * 300
LONG_NAME = "n" * 10_000


def _problems(response: object) -> list[tuple[str, str]]:
    data = response.json()  # type: ignore[attr-defined]
    return [(p["field"], p["code"]) for p in data["problems"]]


# ---- REST API -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field", "code"), [
    ({"path": LONG_PATH, "name": "x"}, "path", "path_too_long"),
    ({"path": LONG_COMPONENT, "name": "x"}, "path", "path_too_long"),
    ({"path": "/tmp/a\u0000b", "name": "x"}, "path", "invalid_path"),
    ({"path": "/tmp/x", "name": LONG_NAME}, "name", "name_too_long"),
    ({"path": "/tmp/x", "name": "x", "base": LONG_NAME}, "base", "base_too_long"),
])
def test_api_answers_422_naming_the_field_for_over_long_values(
        world: World, body: dict[str, str], field: str, code: str) -> None:
    before = world.registry.counts()
    r = world.client.post("/api/v1/checkpoints", json=body, headers=world.auth)
    assert r.status_code == 422, r.text[:300]
    assert (field, code) in _problems(r)
    assert len(r.text) < 2_000  # named, not echoed
    assert world.registry.counts() == before


def test_api_refuses_outside_the_roots_with_one_answer(world: World) -> None:
    outside = write_tiny_llama(world.src.parents[3] / "outside" / "ckpt")  # beside the data dir
    link = world.src.parent / "link"
    link.symlink_to(outside, target_is_directory=True)
    other_orgs = world.settings.imports_dir / world.other.name / "tiny"  # exists: the other org's copy
    before = world.registry.counts()
    answers = []
    for path in (outside, outside.parent / "missing", link, f"{world.src}/../../other/tiny", other_orgs):
        r = world.client.post("/api/v1/checkpoints", json={"path": str(path), "name": "x"}, headers=world.auth)
        assert r.status_code == 422 and _problems(r) == [("path", "path_outside_import_roots")], r.text
        answers.append(r.json())
    assert all(a == answers[0] for a in answers), answers
    assert str(outside) not in json.dumps(answers[0])
    assert world.registry.counts() == before


def test_the_api_cannot_manage_roots(world: World) -> None:
    paths = world.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    assert not [p for p in paths if "root" in p], "roots are managed from the CLI only"


# ---- console form -------------------------------------------------------------------------------

def test_register_form_shows_the_roots_and_bounds_the_path_inline(world: World) -> None:
    token = sign_in(world)
    page = world.client.get("/checkpoints").text
    assert str(world.settings.imports_dir / world.org.name) in page
    assert "endpoints checkpoint roots add PATH --org default" in page
    for path, code in ((LONG_PATH, "path_too_long"), (LONG_COMPONENT, "path_too_long"),
                       ("/etc", "path_outside_import_roots")):
        r = world.client.post("/checkpoints/register", data={"path": path, "name": "x", "csrf_token": token})
        assert r.status_code == 422 and 'class="field-error"' in r.text
        assert f'data-code="{code}"' in r.text
    r = world.client.post("/checkpoints/register", data={"path": str(world.src), "name": LONG_NAME,
                                                         "csrf_token": token})
    assert r.status_code == 422 and 'data-code="name_too_long"' in r.text
    assert LONG_NAME not in r.text  # the form keeps at most 8,192 characters of what was typed


# ---- CLI ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> IsolatedStack:
    return IsolatedStack.make(tmp_path_factory.mktemp("roots") / "data")


def test_cli_roots_list_add_remove(cli: IsolatedStack, tmp_path: Path) -> None:
    listed = cli.cli("checkpoint", "roots", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    roots = json.loads(listed.stdout)
    assert roots[0] == {"path": str(cli.data_dir.resolve() / "imports" / "default"), "kind": "drop folder",
                        "usable": True}
    assert [r["kind"] for r in roots] == ["drop folder", "demo cache"]

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    added = cli.cli("checkpoint", "roots", "add", str(jobs))
    assert added.returncode == 0 and "added import root" in added.stdout
    again = cli.cli("checkpoints", "roots", "add", str(jobs))  # the plural spelling works too
    assert again.returncode == 0 and "already" in again.stdout
    assert str(jobs.resolve()) in [r["path"] for r in json.loads(
        cli.cli("checkpoint", "roots", "list", "--json").stdout)]

    src = write_tiny_llama(jobs / "j1")
    registered = cli.cli("checkpoint", "register", str(src), "--name", "j1")
    assert registered.returncode == 0, registered.stderr

    org = cli.cli("org", "create", "acme", "-q")
    assert org.returncode == 0
    theirs = cli.cli("checkpoint", "roots", "list", "--org", "acme", "--json")
    assert [r["kind"] for r in json.loads(theirs.stdout)] == ["drop folder"]  # not default's roots

    removed = cli.cli("checkpoint", "roots", "remove", str(jobs))
    assert removed.returncode == 0
    refused = cli.cli("checkpoint", "register", str(src), "--name", "j1-again")
    assert refused.returncode == 2 and "path_outside_import_roots" in refused.stderr
    assert "roots add PATH --org default" in refused.stderr
    for args in (("remove", str(jobs)), ("add", str(cli.data_dir)), ("list", "--org", "nope")):
        bad = cli.cli("checkpoint", "roots", *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr, args


@pytest.mark.parametrize(("args", "code"), [
    (("checkpoint", "register", LONG_PATH, "--name", "x"), "path_too_long"),
    (("checkpoint", "register", LONG_COMPONENT, "--name", "x"), "path_too_long"),
    (("checkpoint", "register", "/tmp", "--name", LONG_NAME[:5000]), "name_too_long"),
    (("checkpoint", "roots", "add", LONG_COMPONENT), "path_too_long"),
    (("emit-finetune-completed", "--job", "1", "--checkpoint-path", LONG_COMPONENT), "path_too_long"),
    (("emit-finetune-completed", "--job", "1", "--checkpoint-path", "/etc"), "path_outside_import_roots"),
])
def test_cli_exits_2_without_a_traceback(cli: IsolatedStack, args: tuple[str, ...], code: str) -> None:
    before = cli.registry().counts() if (cli.data_dir / "registry.db").exists() else None
    result = cli.cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert code in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr) < 2_000
    if before is not None:
        assert cli.registry().counts() == before
