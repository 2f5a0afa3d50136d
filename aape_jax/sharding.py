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
        raise ValueError(f"batch_size {batch_size} is not divisible by the {n} devices of the data axis")


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded on `data`.

    Every process passes its own slice (on one host: the whole batch);
    `make_array_from_process_local_data` stitches them into one global array.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def replicate(tree, mesh: Mesh):
    """Places a host pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
