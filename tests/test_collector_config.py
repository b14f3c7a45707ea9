"""Static checks for collector/otelcol-config.yaml and collector/compose.yaml.

These tests only parse the files. They do not start a collector or Docker, so
they catch broken references and ordering, not runtime errors such as a key
that the pinned collector version rejects.
"""

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTOR_DIR = REPO_ROOT / "collector"
COLLECTOR_CONFIG_PATH = COLLECTOR_DIR / "otelcol-config.yaml"
COMPOSE_PATH = COLLECTOR_DIR / "compose.yaml"

PIPELINE_SECTIONS = ("receivers", "processors", "exporters")


def load_yaml(path: Path) -> dict:
    """Parse one YAML file and require a mapping at the top level."""
    with path.open(encoding="utf-8") as stream:
        document = yaml.safe_load(stream)
    assert isinstance(document, dict), f"{path.name}: expected a mapping at the top level, got {type(document).__name__}"
    return document


@pytest.fixture(scope="module")
def collector_config() -> dict:
    return load_yaml(COLLECTOR_CONFIG_PATH)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_PATH)


def component_type(component_id: str) -> str:
    """Return the type part of a collector component id ("otlp/jaeger" -> "otlp")."""
    return component_id.split("/", 1)[0]


def pipelines_of(config: dict) -> dict:
    return (config.get("service") or {}).get("pipelines") or {}


def find_storage_references(node, path: str):
    """Yield (key path, value) for every "storage" key nested in an exporter's settings."""
    if isinstance(node, dict):
        for key, value in node.items():
            child_path = f"{path}.{key}"
            if key == "storage":
                yield child_path, value
            yield from find_storage_references(value, child_path)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from find_storage_references(item, f"{path}[{index}]")


# Checks shared by the tests on the real file and the test on a broken config.
# Each one raises AssertionError naming the first offending component.


def check_pipeline_components_defined(config: dict) -> None:
    """Assert that every id in a pipeline list is a key of the matching top-level section."""
    for pipeline_id, pipeline in pipelines_of(config).items():
        for section in PIPELINE_SECTIONS:
            defined = config.get(section) or {}
            for component_id in pipeline.get(section) or []:
                assert component_id in defined, (
                    f"pipeline {pipeline_id!r} lists {section} entry {component_id!r}, "
                    f"which is not defined under top-level {section!r}"
                )


def check_service_extensions_defined(config: dict) -> None:
    """Assert that every extension enabled in service.extensions is defined."""
    defined = config.get("extensions") or {}
    for extension_id in (config.get("service") or {}).get("extensions") or []:
        assert extension_id in defined, (
            f"service.extensions enables {extension_id!r}, which is not defined under top-level 'extensions'"
        )


def check_exporter_storage_references(config: dict) -> None:
    """Assert that every exporter storage reference names a defined and enabled extension."""
    defined = config.get("extensions") or {}
    enabled = (config.get("service") or {}).get("extensions") or []
    for exporter_id, settings in (config.get("exporters") or {}).items():
        for key_path, storage_id in find_storage_references(settings, exporter_id):
            assert storage_id in defined, (
                f"exporter {exporter_id!r} sets {key_path} to {storage_id!r}, "
                f"which is not defined under top-level 'extensions'"
            )
            assert storage_id in enabled, (
                f"exporter {exporter_id!r} sets {key_path} to {storage_id!r}, "
                f"which is missing from service.extensions, so the collector never starts it"
            )


def check_memory_limiter_first(config: dict) -> None:
    """Assert that memory_limiter comes first in every pipeline that uses it."""
    for pipeline_id, pipeline in pipelines_of(config).items():
        processors = pipeline.get("processors") or []
        types = [component_type(processor_id) for processor_id in processors]
        if "memory_limiter" not in types:
            continue
        assert types[0] == "memory_limiter", (
            f"pipeline {pipeline_id!r} runs {processors[0]!r} before memory_limiter; processors are {processors}"
        )


def exporter_host(settings) -> str | None:
    """Return the host of an exporter endpoint such as "jaeger:4317" or "http://jaeger:4318", or None without one."""
    endpoint = (settings or {}).get("endpoint")
    if not endpoint:
        return None
    if "://" not in endpoint:
        endpoint = f"//{endpoint}"
    return urlsplit(endpoint).hostname


def check_traces_pipeline_exports_to_jaeger(config: dict) -> None:
    """Assert that a traces pipeline exists and its last exporter sends to host "jaeger"."""
    pipelines = pipelines_of(config)
    assert "traces" in pipelines, f"service.pipelines has no 'traces' pipeline, only {sorted(pipelines)}"

    exporters = pipelines["traces"].get("exporters") or []
    assert exporters, "pipeline 'traces' lists no exporters"

    last_exporter = exporters[-1]
    settings = (config.get("exporters") or {}).get(last_exporter)
    host = exporter_host(settings)
    assert host == "jaeger", f"pipeline 'traces' ends in exporter {last_exporter!r} with endpoint host {host!r}, expected 'jaeger'"


def test_collector_config_parses(collector_config):
    """The collector config is a YAML mapping with service.pipelines."""
    assert pipelines_of(collector_config), "otelcol-config.yaml has no service.pipelines"


def test_pipeline_components_defined(collector_config):
    """Every receiver, processor and exporter named in a pipeline is defined."""
    check_pipeline_components_defined(collector_config)


def test_service_extensions_defined(collector_config):
    """Every extension in service.extensions is defined."""
    check_service_extensions_defined(collector_config)


def test_exporter_storage_defined(collector_config):
    """Every exporter storage reference names a defined, enabled extension."""
    check_exporter_storage_references(collector_config)


def test_jaeger_queue_persistent(collector_config):
    """The Jaeger exporter keeps its sending queue in file_storage."""
    exporters = collector_config.get("exporters") or {}
    assert "otlp/jaeger" in exporters, f"exporter 'otlp/jaeger' is not defined, only {sorted(exporters)}"

    sending_queue = exporters["otlp/jaeger"].get("sending_queue") or {}
    assert sending_queue.get("storage") == "file_storage", (
        f"exporter 'otlp/jaeger' sending_queue.storage is {sending_queue.get('storage')!r}, expected 'file_storage'"
    )


def test_memory_limiter_first(collector_config):
    """memory_limiter is the first processor wherever it is used."""
    check_memory_limiter_first(collector_config)


def test_traces_pipeline_to_jaeger(collector_config):
    """The traces pipeline ends in an exporter aimed at the jaeger host."""
    check_traces_pipeline_exports_to_jaeger(collector_config)


BROKEN_CONFIG = {
    "receivers": {"otlp": {"protocols": {"grpc": None}}},
    "processors": {"memory_limiter": {"check_interval": "1s", "limit_mib": 100}},
    "exporters": {"otlp/jaeger": {"endpoint": "jaeger:4317"}},
    "service": {
        "pipelines": {
            "traces": {
                "receivers": ["otlp"],
                "processors": ["memory_limiter", "redaction/undefined"],
                "exporters": ["otlp/jaeger"],
            }
        }
    },
}


def test_checker_reports_undefined_processor():
    """The pipeline check fails and names a processor missing from 'processors'."""
    with pytest.raises(AssertionError, match="redaction/undefined"):
        check_pipeline_components_defined(BROKEN_CONFIG)


def test_checker_reports_misordered_limiter():
    """The ordering check fails when memory_limiter is not first."""
    misordered = {
        "service": {"pipelines": {"traces": {"processors": ["batch", "memory_limiter"]}}},
    }
    with pytest.raises(AssertionError, match="'batch' before memory_limiter"):
        check_memory_limiter_first(misordered)


# Compose checks


def parse_volume(volume) -> tuple[str, str, str]:
    """Return (kind, source, target) for a short-syntax string or long-syntax mapping.

    kind is "bind" for a host path and "volume" for a named volume.
    """
    if isinstance(volume, dict):
        kind = volume.get("type", "volume")
        return kind, volume.get("source", ""), volume.get("target", "")

    source, _, rest = volume.partition(":")
    target = rest.split(":", 1)[0]
    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    return kind, source, target


def test_compose_parses(compose):
    """compose.yaml is a YAML mapping with services."""
    assert compose.get("services"), "compose.yaml has no services"


def test_compose_bind_sources_exist(compose):
    """Every bind-mounted host path exists relative to the collector folder."""
    for service_name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            kind, source, target = parse_volume(volume)
            if kind != "bind":
                continue
            host_path = (COLLECTOR_DIR / source).resolve()
            assert host_path.exists(), (
                f"service {service_name!r} mounts {source!r} at {target!r}, "
                f"but that path does not exist relative to the collector folder"
            )


def test_compose_named_volumes_declared(compose):
    """Every named volume a service mounts is declared under top-level volumes."""
    declared = compose.get("volumes") or {}
    for service_name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            kind, source, _ = parse_volume(volume)
            if kind != "volume":
                continue
            assert source in declared, f"service {service_name!r} mounts named volume {source!r}, which is not declared under top-level 'volumes'"


def test_compose_collector_mounts_config(compose):
    """The collector service mounts otelcol-config.yaml at the image's default config path."""
    volumes = compose["services"]["otel-collector"].get("volumes") or []
    mounts = {target: source for _, source, target in map(parse_volume, volumes)}
    source = mounts.get("/etc/otelcol-contrib/config.yaml")
    assert source == "./otelcol-config.yaml", (
        f"service 'otel-collector' mounts {source!r} at /etc/otelcol-contrib/config.yaml, expected './otelcol-config.yaml'"
    )


def test_compose_depends_on_known(compose):
    """Every depends_on entry names a service defined in the file."""
    services = compose["services"]
    for service_name, service in services.items():
        for dependency in service.get("depends_on") or []:
            assert dependency in services, f"service {service_name!r} depends on unknown service {dependency!r}"


def test_compose_images_pinned(compose):
    """Every image has an explicit tag other than latest."""
    for service_name, service in compose["services"].items():
        image = service.get("image", "")
        _, separator, tag = image.rpartition(":")
        # When the text after the last colon contains a slash, that colon
        # separates a registry host from its port, so the image has no tag.
        has_tag = bool(separator) and "/" not in tag
        assert has_tag, f"service {service_name!r} uses image {image!r} without a tag"
        assert tag != "latest", f"service {service_name!r} uses the moving tag 'latest' in {image!r}"


def test_compose_jaeger_otlp_internal(compose):
    """Jaeger publishes only the UI port, so OTLP reaches it through the collector."""
    for port in compose["services"]["jaeger"].get("ports") or []:
        if isinstance(port, dict):
            container_port = str(port.get("target"))
        else:
            container_port = str(port).rsplit(":", 1)[-1].split("/", 1)[0]
        assert container_port == "16686", f"service 'jaeger' publishes {port!r}; only the UI port 16686 should be published"


def test_collector_redaction_masks_corpus_secrets() -> None:
    """The collector's blocked_values catch the same secret kinds the app masks."""
    import re

    from tests.test_redaction import build_corpus

    config = yaml.safe_load(COLLECTOR_CONFIG_PATH.read_text())
    patterns = [re.compile(p) for p in config["processors"]["redaction"]["blocked_values"]]
    assert "redaction" in config["service"]["pipelines"]["traces"]["processors"]
    corpus = build_corpus()
    missed = []
    for text in corpus["values"]:
        masked = text
        for pattern in patterns:
            masked = pattern.sub("****", masked)
        missed += [secret for secret in corpus["secrets"] if secret in masked]
    # Card numbers without a known brand prefix pass: RE2 cannot run the Luhn check.
    assert len(missed) <= 2, f"{len(missed)} corpus secrets pass the collector"
