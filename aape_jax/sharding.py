"""Device mesh, shardings, and host -> global batches (data parallel).

One mesh axis, `data`: batches are split along it, everything else
(trainable tree, optimizer state, CLIP, prompt tables) is replicated. Axis
types are `Auto`: `jax.make_mesh` defaults to Explicit axes, under which
optax's integer-label cross-entropy fails to trace on newer JAX.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from aape_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D `data` mesh over the first `num_devices` devices (all by default)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices; {len(devices)} are available")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ConfigError(f"config.batch_size is {batch_size}: not divisible by the {n} devices of the data axis",
                          hint="set config.num_devices to use fewer devices, or change the batch size")


def device_multiple(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's device count (an evaluation batch shards evenly)."""
    return -(-batch_size // mesh.size) * mesh.size


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A global batch (the same on every process) -> global arrays sharded on `data`.

    Each process hands over only its contiguous share of the rows, the ones
    its own devices hold; `make_array_from_process_local_data` stitches the
    shares into one global array.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        rows = len(v) // jax.process_count()
        local = v[jax.process_index() * rows : (jax.process_index() + 1) * rows]
        out[k] = jax.make_array_from_process_local_data(sharding, local, v.shape)
    return out


def replicate(tree, mesh: Mesh):
    """Places a pytree (the same on every process) on every device of the mesh.

    Leaves go through host memory first: a multi-process mesh accepts host
    values, not arrays committed to one local device.
    """
    return jax.device_put(jax.tree.map(np.asarray, tree), replicated(mesh))
