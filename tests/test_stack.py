"""The deployment files as a user takes them: prefect.yaml's deployments and the docker-compose stack.

No Docker engine runs here, so the compose file and the Dockerfile are checked as data: services,
ports, dependencies, health checks, volumes and environment. prefect.yaml is registered against a
real Prefect server in test_prefect_server.py.
"""

import re

import yaml

from conftest import ROOT
from germinate.config import RunConfig, build_config
from germinate.flows.build import build_dataset

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_every_example_config_is_a_deployment_with_its_settings_and_a_paused_schedule():
    deployments = {d["name"]: d for d in load("prefect.yaml")["deployments"]}
    assert set(deployments) == {path.stem for path in EXAMPLES} and len(EXAMPLES) >= 3
    for path in EXAMPLES:
        deployment = deployments[path.stem]
        module, function = deployment["entrypoint"].split(":")
        assert (ROOT / module).is_file() and function == build_dataset.fn.__name__
        shipped = build_config(path)  # the example loads, and the deployment runs exactly it
        assert RunConfig.model_validate(deployment["parameters"]["config"]) == shipped
        (schedule,) = deployment["schedules"]
        assert schedule["active"] is False and len(schedule["cron"].split()) == 5
        assert deployment["work_pool"]["name"] == "germinate"
    assert "germinate run --config examples/demo.yaml" in (ROOT / "Makefile").read_text()  # `make run`'s run


def test_the_flow_parameters_are_a_form():
    """Prefect builds the UI's run form from this schema: one `config` object with every section."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(build_dataset.fn).model_dump()
    assert schema["required"] == ["config"]
    (run_config,) = [d for name, d in schema["definitions"].items() if name == "RunConfig"]
    assert {"seeds", "strategies", "budget", "llm", "quality", "hub"} <= set(run_config["properties"])


def test_compose_stack_services_ports_health_and_dependencies():
    compose = load("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "worker", "vllm"}
    for name in ("postgres", "prefect-server", "vllm"):
        assert services[name]["healthcheck"]["test"], name
    assert "4200:4200" in services["prefect-server"]["ports"] and "8000:8000" in services["vllm"]["ports"]
    assert services["prefect-server"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {
        "prefect-server": {"condition": "service_healthy"}, "vllm": {"condition": "service_healthy"},
    }
    # Prefect's database is the postgres service, with its user, password and database
    postgres = services["postgres"]["environment"]
    url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url == (f"postgresql+asyncpg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
                   f"@postgres:5432/{postgres['POSTGRES_DB']}")
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "prefect worker start --pool germinate" in worker["command"][-1]
    assert "deploy --all" in worker["command"][-1] and worker["build"] == "."
    # vLLM: the model and the token from the environment, one GPU, the model cache on a volume
    vllm = services["vllm"]
    assert "${VLLM_MODEL" in " ".join(vllm["command"]) and vllm["environment"]["HF_TOKEN"].startswith("${HF_TOKEN")
    (gpu,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert named == set(compose["volumes"])  # every volume is a named one, declared
    # No secret is written into the file: every token or password comes from the environment.
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"hf_[A-Za-z0-9]{8,}", text)


def test_the_stack_config_points_at_the_vllm_service():
    config = build_config(ROOT / "examples" / "stack.yaml")
    assert config.llm.backend == "openai" and config.llm.base_url == "http://vllm:8000/v1"


def test_the_image_installs_as_make_run_does():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^run: (\S+)", makefile, re.M).group(1)  # what `make run` installs before running
    assert f"RUN make {target}" in dockerfile
    assert "ENV PATH=/app/.venv/bin:$PATH" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and "data/runs/" in ignored
