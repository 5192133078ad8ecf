"""What XLA says about a compiled step, per device: its memory, its cost, and its out-of-memory error.

The ahead-of-time compiles (aot.py) and the benchmark (bench.py) read compiled steps through this module
only, so that "compiled memory" and "XLA's FLOPs" mean the same thing in every report.
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Memory:
  """XLA's memory analysis of one compiled program, bytes per device."""

  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written into donated arguments
  temp_bytes: int
  code_bytes: int

  @property
  def total_bytes(self) -> int:
    """What the step needs at once: arguments + outputs not aliased to donated arguments + temporaries +
    generated code."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes


def memory(compiled: jax.stages.Compiled) -> Memory:
  m = compiled.memory_analysis()
  return Memory(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes,
                m.generated_code_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Cost:
  """XLA's cost analysis of one compiled program, per device: an SPMD compile is one partitioned program that
  every device runs, and the analysis counts that program (configs/tiny.py on v5e:2x2: 1/4 of the FLOPs and
  bytes of v5e:1x1, within 2%). A scanned loop body is counted once, not once per iteration."""

  flops: float
  bytes_accessed: float


def cost(compiled: jax.stages.Compiled) -> Cost | None:
  """The compiled program's FLOPs and bytes accessed per device, or None where XLA reports none."""
  costs = compiled.cost_analysis()
  costs = (costs[0] if isinstance(costs, (list, tuple)) else costs) or {}
  flops, bytes_accessed = float(costs.get('flops', 0.0)), float(costs.get('bytes accessed', 0.0))
  return Cost(flops, bytes_accessed) if flops > 0 and bytes_accessed > 0 else None


def is_out_of_memory(error: Exception) -> bool:
  """Whether a compile failed because the program does not fit in the device's memory."""
  return isinstance(error, jax.errors.JaxRuntimeError) and (
      'RESOURCE_EXHAUSTED' in str(error) or 'out of memory' in str(error).lower())
