"""Reading Harbor task directories as Harbor 0.25 does: every ignored key named in a warning, what would change
a score refused with the key named, steps and verifier plans resolved as Harbor resolves them, compose files
checked at load, and a multi-step task's reward combined as Harbor combines it."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.environments.compose import load_compose
from evalkit.errors import TaskConfigError, TaskUnsupportedError
from evalkit.results import StepResult
from evalkit.steps import combine_rewards, min_reward_failure, stop_reason
from evalkit.tasks import load_task
from tests.conftest import BENCHMARKS, write_task

BENCH = BENCHMARKS / "evalkit-harbor-format"


def _steps_task(root: Path, toml: str, steps: tuple[str, ...] = ("one",), *, step_tests: bool = True) -> Path:
    task = write_task(root, "steps", task_toml=toml)
    (task / "instruction.md").unlink()
    for step in steps:
        (task / "steps" / step).mkdir(parents=True, exist_ok=True)
        (task / "steps" / step / "instruction.md").write_text(f"<!-- canary GUID 1234 -->\nDo {step}.\n")
        if step_tests:
            (task / "steps" / step / "tests").mkdir(exist_ok=True)
            (task / "steps" / step / "tests" / "test.sh").write_text("true\n")
    return task


def test_every_ignored_key_is_named_in_a_warning(tmp_path: Path):
    task = write_task(tmp_path, "keys", task_toml=(
        'artifacts = [{ source = "/app/x", colour = "red" }]\n[verifier]\ntimeout = 30\n[environment]\nskills_dir = "/s"\n'
        '[[environment.mcp_servers]]\nname = "m"\n[verifier.environment]\n[verifier.environment.healthcheck]\ncommand = "true"\n'))
    (task / "trajectory.json").write_text("{}")
    assert load_task(task).warnings == (
        "artifacts[0].colour: not a Harbor task.toml key; ignored",
        "environment.mcp_servers: not implemented by evalkit; ignored (evalkit's agents get no MCP servers)",
        "environment.skills_dir: not implemented by evalkit; ignored (no agent skills are injected)",
        "verifier.timeout: not a Harbor task.toml key; ignored (did you mean timeout_sec?)",
        "verifier.environment.healthcheck: never run (Harbor accepts it and never runs it either)",
        "keys/trajectory.json: prior agent context is not loaded by evalkit's agents",
    )
    assert load_task(BENCH / "oracle-run").warnings == ()  # [metadata] and [task] are free-form


@pytest.mark.parametrize(("toml", "message"), [
    ('[agent]\nnetwork_mode = "no-network"\n', "agent.network_mode = 'no-network' differs from environment.network_mode = "
                                                "'public': changing the network between phases is not supported"),
    ('artifacts = [{ source = "/var/log", service = "db" }]\n',
     "artifacts[0].service = 'db': collecting from a compose sidecar is not supported"),
    ('artifacts = ["relative/path"]\n', "artifacts[0].source = 'relative/path': only absolute artifact paths are supported"),
    ('[[verifier.collect]]\ncommand = "true"\nservice = "db"\n',
     "verifier.collect[0].service = 'db': hooks in a compose sidecar are not supported"),
    ('[environment]\ngpu_types = ["a100"]\n', "environment.gpu_types: accelerators are not supported yet"),
    ('[verifier]\nenvironment_mode = "separate"\n[[artifacts]]\nsource = "/app"\nexclude = ["*.log"]\n',
     "artifacts with `exclude` in a separate verifier environment: exclusions are not implemented and would change what grading sees"),
])
def test_what_would_change_a_score_is_refused_naming_the_key(tmp_path: Path, toml: str, message: str):
    task = write_task(tmp_path, "t", task_toml=toml)
    with pytest.raises(TaskUnsupportedError) as caught:
        load_task(task)
    assert str(caught.value) == f"task 't' ({task}): {message}"


def test_upload_filters_are_refused(tmp_path: Path):
    task = write_task(tmp_path, "t")
    (task / "tests" / ".harborignore").write_text("*.bak\n")
    with pytest.raises(TaskUnsupportedError) as caught:
        load_task(task)
    assert str(caught.value) == (f"task 't' ({task}): tests/.harborignore: upload filters are not supported "
                                 "(they change which test or solution files a run sees)")


def test_steps_load_with_their_own_files_and_harbors_defaults(tmp_path: Path):
    task = load_task(_steps_task(tmp_path, '[verifier]\ntimeout_sec = 30\nuser = "grader"\n[verifier.env]\nA = "task"\n'
                                 '[[steps]]\nname = "one"\n[steps.verifier.env]\nA = "step"\nB = "step"\n'
                                 '[[steps]]\nname = "two"\n[steps.verifier]\ntimeout_sec = 5\nuser = "other"\n', ("one", "two")))
    one, two = task.steps
    assert (one.name, one.instruction) == ("one", "Do one.\n")  # the canary line is not part of it
    plan_one, plan_two = task.verifier_plan(one), task.verifier_plan(two)
    # A step's verifier timeout defaults to 600 s, never to the task's 30 (as in Harbor).
    assert (plan_one.timeout_sec, plan_one.user, plan_one.env) == (600.0, "grader", {"A": "step", "B": "step"})
    assert (plan_two.timeout_sec, plan_two.user, plan_two.env) == (5.0, "other", {"A": "task"})
    assert plan_one.tests_dirs == (task.tests_dir, one.path / "tests") and not plan_one.separate
    assert task.for_step(two).solution_dir == task.solution_dir  # no steps/two/solution/: the task's


@pytest.mark.parametrize(("toml", "steps", "message"), [
    ('[[steps]]\nname = "a"\n[[steps]]\nname = "A"\n', ("a",), "two steps are named 'A' (names are unique ignoring case)"),
    ('[[steps]]\nname = "missing"\n', (), "missing steps/missing/instruction.md"),
])
def test_bad_steps_name_the_problem(tmp_path: Path, toml: str, steps: tuple[str, ...], message: str):
    task = _steps_task(tmp_path, toml, steps)
    with pytest.raises(TaskConfigError) as caught:
        load_task(task)
    assert str(caught.value) == f"task 'steps' ({task}): {message}"


def test_a_step_without_any_test_script_is_a_config_error(tmp_path: Path):
    task = _steps_task(tmp_path, '[[steps]]\nname = "one"\n', step_tests=False)
    (task / "tests" / "test.sh").unlink()
    with pytest.raises(TaskConfigError) as caught:
        load_task(task)
    assert str(caught.value) == f"task 'steps' ({task}): step 'one': missing tests/test.sh (the verifier)"


def test_separate_verifier_plans_resolve_the_image_as_harbor_does():
    bundled = load_task(BENCH / "separate-verifier")
    plan = bundled.verifier_plan()
    assert plan.separate and plan.bundled and plan.image_context == bundled.tests_dir and plan.tests_dirs == ()
    assert plan.environment.env == {"GRADER_MODE": "separate"}
    assert [a.source for a in plan.artifacts] == ["/app/result.txt", "/app/reports"]
    fresh = load_task(BENCH / "separate-verifier-collect").verifier_plan()
    assert fresh.separate and not fresh.bundled and [c.command.split()[0] for c in fresh.collect] == ["mkdir"]


def test_a_separate_verifier_without_an_image_of_its_own_uses_the_tasks_prebuilt_image(tmp_path: Path):
    task = write_task(tmp_path, "prebuilt", task_toml='[environment]\ndocker_image = "debian:bookworm-slim"\n'
                      '[verifier]\nenvironment_mode = "separate"\n', dockerfile=None)
    loaded = load_task(task)
    plan = loaded.verifier_plan()
    assert plan.separate and plan.docker_image == "debian:bookworm-slim" and plan.image_context is None
    view = loaded.with_image(context=plan.image_context, docker_image=plan.docker_image, environment=plan.environment)
    assert view.config.environment.docker_image == "debian:bookworm-slim"  # pulled or found, never built from environment/
    assert plan.tests_dirs == (loaded.tests_dir,)


def _compose(tmp_path: Path, text: str) -> Path:
    (tmp_path / "docker-compose.yaml").write_text(text)
    (tmp_path / "side").mkdir(exist_ok=True)
    (tmp_path / "side" / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    return tmp_path / "docker-compose.yaml"


@pytest.mark.parametrize(("text", "error", "message"), [
    ("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n", TaskConfigError,
     "depends_on forms a cycle: a -> b -> a"),
    ("services:\n  main:\n    depends_on:\n      a: {condition: service_healthy}\n  a:\n    image: x\n", TaskConfigError,
     "services.main waits for 'a' to be healthy, but 'a' has no healthcheck"),
    ("services:\n  main:\n    depends_on: [db]\n", TaskConfigError, "services.main.depends_on names 'db', which is not a service"),
    ("services:\n  a:\n    image: ${SECRET}\n", TaskConfigError,
     "refers to ${SECRET}, which environment.pass_env does not list; a task reads only host variables the job passes"),
    ("services:\n  main:\n    build: .\n", TaskUnsupportedError, "services.main.build: `main` is always built from environment/Dockerfile"),
    ("services:\n  a:\n    image: x\n    privileged: true\n", TaskUnsupportedError, "services.a.privileged is not supported"),
    ("services:\n  a:\n    build: {context: side, args: {X: 1}}\n", TaskUnsupportedError,
     "services.a.build.args is not supported (only `context` with its Dockerfile)"),
])
def test_compose_files_are_checked_at_load(tmp_path: Path, text: str, error: type, message: str):
    path = _compose(tmp_path, text)
    with pytest.raises(error) as caught:
        load_compose(path, where="task 't'")
    assert str(caught.value).endswith(message)
    assert str(caught.value).startswith("task 't': docker-compose.yaml")


def test_compose_services_in_dependency_order_with_their_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DB_TAG", "v2")
    path = _compose(tmp_path, (
        "services:\n  main:\n    depends_on:\n      db: {condition: service_healthy}\n    ports: ['80:80']\n"
        "  db:\n    build: ./side\n    command: serve --port 5\n    environment: [A=1, B]\n    volumes: [data:/d, /anon]\n"
        "    healthcheck: {test: nc -z 127.0.0.1 5, interval: 1m30s, timeout: 500ms, start_period: 2s}\n"
        "    labels: {tag: '${DB_TAG}'}\nvolumes:\n  data:\n"))
    project = load_compose(path, where="t", pass_env=["DB_TAG"])
    assert list(project.services) == ["db", "main"] and project.volumes == ("data",)
    db = project.services["db"]
    assert (db.command, db.environment, db.build_context) == (("serve", "--port", "5"), {"A": "1"}, (tmp_path / "side").resolve())
    assert [(v.source, v.target) for v in db.volumes] == [("data", "/d"), (None, "/anon")]
    assert (db.healthcheck.test, db.healthcheck.interval_sec, db.healthcheck.timeout_sec, db.healthcheck.start_period_sec) == (
        ("CMD-SHELL", "nc -z 127.0.0.1 5"), 90.0, 0.5, 2.0)
    assert project.warnings == (
        "docker-compose.yaml: services.main.ports: not implemented by evalkit; ignored (nothing is published; services reach each other on 127.0.0.1)",
        "docker-compose.yaml: services.db.labels: not implemented by evalkit; ignored (evalkit labels its containers itself)",
    )


def _step(name: str, rewards: dict[str, float] | None, error: bool = False) -> StepResult:
    from evalkit.results import ErrorInfo

    return StepResult(name=name, rewards=rewards,
                      error=ErrorInfo(type="X", kind="agent", phase="agent", message="m") if error else None)


def test_multi_step_rewards_combine_as_harbor_combines_them():
    steps = [_step("a", {"reward": 1.0, "style": 0.5}), _step("b", None, error=True), _step("c", {"reward": 0.5})]
    assert combine_rewards(steps, "mean") == {"reward": 0.75, "style": 0.25}  # b has no verdict: not counted
    assert combine_rewards(steps, "final") == {"reward": 0.5}
    assert combine_rewards(steps[:2], "final") is None  # the last step that ran has no verdict
    assert combine_rewards([_step("b", None)], "mean") is None and combine_rewards([], "mean") is None


def test_min_reward_gates_as_harbor_gates():
    assert min_reward_failure({"reward": 1.0}, 1.0) is None  # equal passes
    assert min_reward_failure({"reward": 0.5}, {"reward": 1.0}) == "reward = 0.5 is below min_reward 1"
    assert min_reward_failure({"reward": 1.0}, {"style": 0.1}) == "style = -inf is below min_reward 0.1"
    assert min_reward_failure(None, 0.0) == "reward = -inf is below min_reward 0"
    assert stop_reason(_step("a", None, error=True), None) == "step 'a' failed without a verdict"
    assert stop_reason(_step("a", {"reward": 0.0}, error=True), None) is None  # a verdict: it goes on
