"""What every flow needs: the registry, the checkpoint store and the engine host, from blocks."""

from __future__ import annotations

from dataclasses import dataclass

from blocks.settings_blocks import CheckpointStoreConfig, EngineHost, RegistryDatabase
from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.replacements import ModelRoot

DEFAULT = "default"


@dataclass
class FlowContext:
    registry: Registry
    store: LocalCheckpointStore
    sources: SourcePolicy  # where checkpoints may be registered from


def load_context() -> FlowContext:
    registry_block = RegistryDatabase.load(DEFAULT)
    store_block = CheckpointStoreConfig.load(DEFAULT)
    return FlowContext(registry_block.registry(), store_block.open_store(),  # type: ignore[union-attr]
                       store_block.source_policy())  # type: ignore[union-attr]


def load_engine_host(pool: str) -> EngineHost:
    """Per-pool engine settings (`engine-host/<pool>`), falling back to `default`."""
    try:
        return EngineHost.load(pool)  # type: ignore[return-value]
    except ValueError:
        return EngineHost.load(DEFAULT)  # type: ignore[return-value]


def engine_model_root(instance: InstanceSpec) -> ModelRoot:
    """Where the checkpoints appear to engines on the instance's pool (its engine-host block)."""
    host = load_engine_host(instance.work_pool)

    def root(runtime: str, endpoint_id: str, generation: int = 0) -> str:
        return host.model_root(runtime, endpoint_id, generation)

    return root
