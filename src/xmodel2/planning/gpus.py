"""Datasheet figures of the GPUs a run can be planned for: dense bf16 peak and memory.

NVIDIA's datasheets print tensor-core throughput "with sparsity" (2:4 structured sparsity, which
training does not use); the dense figure is half of it and is the one listed here. Memory is the
datasheet's GB (10^9 bytes), a little under what the driver reports, so a plan errs on the safe
side.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmodel2.errors import UserError

GB = 10**9
TERA = 10**12
# Model FLOPs utilisation assumed when none is given: well-tuned dense LLM training on these GPUs
# reaches 35-50% of the bf16 peak; 40% is the middle of that.
DEFAULT_MFU = 0.40


@dataclass(frozen=True)
class Gpu:
    name: str
    model: str
    bf16_flops: float  # dense bf16 tensor-core peak, FLOP/s
    memory: int  # bytes


GPUS = {gpu.name: gpu for gpu in (
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity);
    # 80 GB HBM2e (SXM) or 40 GB HBM2.
    Gpu("a100", "A100 SXM 80GB", 312 * TERA, 80 * GB),
    Gpu("a100-40gb", "A100 40GB", 312 * TERA, 40 * GB),
    # NVIDIA H100 Tensor Core GPU datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity (SXM),
    # 1,513 (PCIe); 80 GB HBM3 / HBM2e.
    Gpu("h100", "H100 SXM 80GB", 989.5 * TERA, 80 * GB),
    Gpu("h100-pcie", "H100 PCIe 80GB", 756.5 * TERA, 80 * GB),
    # NVIDIA H800 Tensor Core GPU datasheet: the H100 SXM's tensor cores (BF16 1,979 TFLOPS with
    # sparsity) with less NVLink bandwidth; 80 GB HBM3. The GPU of the Xmodel-2 report.
    Gpu("h800", "H800 SXM 80GB", 989.5 * TERA, 80 * GB),
    # NVIDIA H200 Tensor Core GPU datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity (SXM);
    # 141 GB HBM3e.
    Gpu("h200", "H200 SXM 141GB", 989.5 * TERA, 141 * GB),
    # NVIDIA L40S datasheet: BF16 Tensor Core 733 TFLOPS with sparsity (362.05 dense); 48 GB GDDR6.
    Gpu("l40s", "L40S 48GB", 362.05 * TERA, 48 * GB),
    # NVIDIA L4 Tensor Core GPU datasheet: BF16 Tensor Core 242 TFLOPS with sparsity; 24 GB GDDR6.
    Gpu("l4", "L4 24GB", 121 * TERA, 24 * GB),
)}


def gpu(name: str) -> Gpu:
    """The table's entry for `name` (--gpu), case-insensitive."""
    found = GPUS.get(name.lower())
    if found is None:
        raise UserError(f"--gpu {name}: unknown GPU; choose one of {', '.join(GPUS)}")
    return found
