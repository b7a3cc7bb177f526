"""Machine shapes that carry the GPUs llmft compiles for, and the GPU steps' sizes.

Where the numbers come from:

- Shapes: Compute Engine. NVIDIA L4 runs only on G2 machines, each with a fixed number of L4s
  (g2-standard-4/8/12/16/32: 1, -24: 2, -48: 4, -96: 8; 4 GB of memory per vCPU); NVIDIA T4
  attaches to N1 machines (n1-standard-N: 3.75 GB per vCPU) in counts of 1, 2 or 4
  (https://cloud.google.com/compute/docs/gpus). Compute Engine's "GB" here is 2**30 bytes.
- GKE allocatable: what a node offers pods after GKE's reservations
  (https://cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes): CPU 6 % of the
  first core, 1 % of the second, 0.5 % of cores 3-4, 0.25 % above; memory 25 % of the first
  4 GiB, 20 % of the next 4, 10 % of the next 8, 6 % of the next 112, 2 % above 128 GiB, plus
  100 MiB for the eviction threshold. The kernel's own share (memory/64 + 16 MiB, + 64 MiB
  swiotlb above 3 GiB, as kubernetes/autoscaler ``cloudprovider/gce/reserved.go`` estimates it)
  is taken off first, so the figures err low: n1-standard-4 3.92 vCPU / 12.1 GiB, g2-standard-4
  3.92 vCPU / 13.0 GiB.
- Default requests leave room for the node's daemonsets (kube-proxy, logging and metrics agents,
  the NVIDIA device plugin): 0.5 vCPU and 1.5 GiB under allocatable, rounded down to whole
  units, so n1-standard-4 (T4) gets 3 vCPU / 10Gi and g2-standard-4 (L4) 3 vCPU / 11Gi.
- Vertex AI chooses the VM of a pipeline step from its cpu/memory limits and accelerator; the
  mapping is not published (https://cloud.google.com/vertex-ai/docs/pipelines/machine-types
  documents only the e2-standard-4 default and the 96 vCPU / 624 GB caps), so llmft compiles the
  exact vCPU count and memory of a real machine of the accelerator's family: the step then
  fits that machine and no smaller one of the family.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

GIB = 2**30
MIB = 2**20
DAEMONSET_CPU = 0.5
DAEMONSET_MEMORY = 1.5 * GIB


@dataclass(frozen=True)
class Machine:
    """One Compute Engine machine shape with the GPU counts it can carry.

    Attributes:
        name: e.g. ``g2-standard-8``.
        vcpus: Virtual CPUs.
        memory_gib: Memory in GiB (Compute Engine's "GB").
        gpu: ``L4`` or ``T4``.
        gpu_counts: GPU counts this shape can carry.
    """

    name: str
    vcpus: int
    memory_gib: float
    gpu: str
    gpu_counts: tuple[int, ...]

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


def _n1(n: int) -> Machine:
    return Machine(f"n1-standard-{n}", n, 3.75 * n, "T4", (1, 2, 4))


def _g2(n: int, gpus: int) -> Machine:
    return Machine(f"g2-standard-{n}", n, 4.0 * n, "L4", (gpus,))


MACHINES: dict[str, Machine] = {
    m.name: m
    for m in (
        *(_n1(n) for n in (4, 8, 16, 32)),
        *(
            _g2(n, g)
            for n, g in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8))
        ),
    )
}
"""The shapes llmft knows, smallest first within each family."""

GPU_COUNTS = (1, 2, 4, 8)

VERTEX_DEFAULT = {
    ("L4", 1): "g2-standard-8",
    ("L4", 2): "g2-standard-24",
    ("L4", 4): "g2-standard-48",
    ("L4", 8): "g2-standard-96",
    ("T4", 1): "n1-standard-8",
    ("T4", 2): "n1-standard-16",
    ("T4", 4): "n1-standard-32",
}
"""Vertex's default machine per GPU and count: 8 vCPU and ~30 GB per GPU where a shape allows
(data loading, tokenising and the CPU copy of the weights while loading)."""


def _config_error(msg: str) -> Exception:
    from trainer.config import ConfigError

    return ConfigError(msg)


def machines_for(gpu: str, count: int) -> list[Machine]:
    """Shapes that carry ``count`` GPUs of type ``gpu``, smallest first.

    Raises:
        trainer.config.ConfigError: No shape carries that many (e.g. 8 T4s).
    """
    found = [m for m in MACHINES.values() if m.gpu == gpu and count in m.gpu_counts]
    if not found:
        counts = sorted({c for m in MACHINES.values() if m.gpu == gpu for c in m.gpu_counts})
        raise _config_error(
            f"--accelerator-count {count}: no {gpu} machine carries {count} GPUs "
            f"(possible counts: {', '.join(map(str, counts))})"
        )
    return sorted(found, key=lambda m: (m.vcpus, m.memory_gib))


def machine(name: str) -> Machine:
    """The shape called ``name``.

    Raises:
        trainer.config.ConfigError: Unknown machine type.
    """
    try:
        return MACHINES[name.strip()]
    except KeyError:
        raise _config_error(
            f"--machine-type {name!r}: unknown; use one of {', '.join(MACHINES)}"
        ) from None


def gke_allocatable(m: Machine) -> tuple[float, int]:
    """(vCPU, bytes) a GKE node of shape ``m`` offers pods (see the module docstring)."""
    cores = m.vcpus
    cpu_reserved = 0.06 * min(cores, 1) + 0.01 * max(0, min(cores, 2) - 1)
    cpu_reserved += 0.005 * max(0, min(cores, 4) - 2) + 0.0025 * max(0, cores - 4)
    total = m.memory_bytes
    kernel = total / 64 + 16 * MIB + (64 * MIB if total > 3 * GIB else 0)
    capacity = total - kernel
    gib = capacity / GIB
    reserved = 0.0
    for lo, hi, frac in ((0, 4, 0.25), (4, 8, 0.20), (8, 16, 0.10), (16, 128, 0.06)):
        reserved += frac * max(0.0, min(gib, hi) - lo)
    reserved += 0.02 * max(0.0, gib - 128)
    memory = capacity - reserved * GIB - 100 * MIB
    return round(cores - cpu_reserved, 3), int(memory)


_MEM = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGTE]i?|[kmgte])?\s*$")
_MEM_UNITS = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_memory(text: str) -> int:
    """A Kubernetes memory quantity (``12G``, ``11Gi``, ``12000M``, bytes) in bytes.

    Raises:
        trainer.config.ConfigError: Not a quantity.
    """
    m = _MEM.match(str(text))
    if not m or (m.group(2) or "") not in _MEM_UNITS:
        raise _config_error(f"memory {text!r}: expected a quantity such as 12G or 11Gi")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2) or ""])


def parse_cpu(text: str) -> float:
    """A Kubernetes CPU quantity (``3``, ``3.5``, ``3500m``) in vCPUs.

    Raises:
        trainer.config.ConfigError: Not a positive quantity.
    """
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise _config_error(f"cpu {text!r}: expected a positive number of vCPUs such as 3 or 3500m")
    return value


def _fmt_cpu(cpu: float) -> str:
    return str(int(cpu)) if cpu == int(cpu) else f"{round(cpu * 1000)}m"


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


@dataclass(frozen=True)
class GpuStepSize:
    """What the GPU steps (train-lora, evaluate) ask for on one target.

    Attributes:
        machine: The shape the numbers were chosen for (or checked against).
        cpu: CPU quantity compiled into the spec (request on gke, limit on vertex).
        memory: Memory quantity compiled into the spec.
        note: One line for the user saying what was chosen and why.
    """

    machine: Machine
    cpu: str
    memory: str
    note: str


def gpu_step_size(
    target: str,
    gpu: str,
    count: int = 1,
    *,
    machine_type: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
) -> GpuStepSize:
    """Choose or check the cpu/memory of the GPU steps.

    gke: the defaults fit the allocatable of the smallest node carrying ``count`` GPUs (or of
    ``machine_type``), less daemonset headroom; explicit requests must fit that allocatable.
    vertex: the compiled limits are exactly the vCPUs and memory of a real machine of the GPU's
    family: ``machine_type``, else the smallest shape holding ``cpu``/``memory``, else the
    default of ``VERTEX_DEFAULT``.

    Args:
        target: ``gke`` or ``vertex``.
        gpu: ``L4`` or ``T4``.
        count: GPUs per GPU step.
        machine_type: The node pool's (gke) or the wanted (vertex) machine shape.
        cpu: Explicit CPU quantity (``--gpu-step-cpu``).
        memory: Explicit memory quantity (``--gpu-step-memory``).

    Returns:
        The ``GpuStepSize``.

    Raises:
        trainer.config.ConfigError: Unknown machine, a machine of another GPU or count, or a
            request larger than the machine offers.
    """
    if count not in GPU_COUNTS:
        raise _config_error(f"--accelerator-count {count}: use 1, 2, 4 or 8")
    fitting = machines_for(gpu, count)
    if machine_type:
        m = machine(machine_type)
        if m.gpu != gpu or count not in m.gpu_counts:
            raise _config_error(
                f"--machine-type {m.name} carries {'/'.join(map(str, m.gpu_counts))} x {m.gpu}, "
                f"not {count} x {gpu}; {gpu} x {count} runs on "
                + ", ".join(x.name for x in fitting)
            )
    want_cpu = parse_cpu(cpu) if cpu is not None else None
    want_mem = parse_memory(memory) if memory is not None else None
    if target == "vertex":
        return _vertex_size(gpu, count, fitting, machine_type, want_cpu, want_mem)
    m = machine(machine_type) if machine_type else fitting[0]
    alloc_cpu, alloc_mem = gke_allocatable(m)
    where = f"{m.name} ({alloc_cpu:g} vCPU, {_gib(alloc_mem)} allocatable on GKE)"
    hint = "" if machine_type else "; name the node pool's machine with --machine-type"
    if want_cpu is not None and want_cpu > alloc_cpu:
        raise _config_error(f"--gpu-step-cpu {cpu} does not fit {where}{hint}")
    if want_mem is not None and want_mem > alloc_mem:
        raise _config_error(f"--gpu-step-memory {memory} does not fit {where}{hint}")
    cpu_q = (
        cpu.strip() if cpu is not None else _fmt_cpu(max(1, math.floor(alloc_cpu - DAEMONSET_CPU)))
    )
    mem_q = (
        memory.strip()
        if memory is not None
        else f"{max(1, math.floor((alloc_mem - DAEMONSET_MEMORY) / GIB))}Gi"
    )
    return GpuStepSize(m, cpu_q, mem_q, f"GPU steps request {cpu_q} vCPU, {mem_q}: fit {where}")


def _vertex_size(
    gpu: str,
    count: int,
    fitting: list[Machine],
    machine_type: str | None,
    want_cpu: float | None,
    want_mem: int | None,
) -> GpuStepSize:
    if machine_type:
        m = machine(machine_type)
        if (want_cpu or 0) > m.vcpus or (want_mem or 0) > m.memory_bytes:
            raise _config_error(
                f"the GPU step request exceeds {m.name} ({m.vcpus} vCPU, {m.memory_gib:g} GB)"
            )
    elif want_cpu is None and want_mem is None:
        m = MACHINES[VERTEX_DEFAULT[(gpu, count)]]
    else:
        big = [
            x for x in fitting if (want_cpu or 0) <= x.vcpus and (want_mem or 0) <= x.memory_bytes
        ]
        if not big:
            largest = fitting[-1]
            raise _config_error(
                f"no {gpu} x {count} machine has that much: the largest is {largest.name} "
                f"({largest.vcpus} vCPU, {largest.memory_gib:g} GB)"
            )
        m = big[0]
    mem = m.memory_gib
    mem_q = f"{int(mem)}G" if mem == int(mem) else f"{mem:g}G"
    return GpuStepSize(
        m,
        str(m.vcpus),
        mem_q,
        f"GPU steps: {m.vcpus} vCPU, {mem_q} with {count} x {gpu} = {m.name}",
    )


def machine_table() -> str:
    """A Markdown table of every shape: vCPU, memory, GPUs and GKE allocatable."""
    lines = [
        "| machine | vCPU | memory (GB) | GPUs | GKE allocatable vCPU | GKE allocatable memory |",
        "|---|---|---|---|---|---|",
    ]
    for m in MACHINES.values():
        cpu, mem = gke_allocatable(m)
        counts = "/".join(map(str, m.gpu_counts))
        lines.append(
            f"| {m.name} | {m.vcpus} | {m.memory_gib:g} | {counts} x {m.gpu} | {cpu:g} | "
            f"{_gib(mem)} |"
        )
    return "\n".join(lines)
