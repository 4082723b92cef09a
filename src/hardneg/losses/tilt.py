r"""The hardness tilt, one definition: π_ij ∝ exp(β s_ij / t) over an anchor's valid candidates.

β ≥ 0 is the tilt of Robinson et al. (HCL, ICLR 2021) and Jiang et al. (H-SCL, arXiv 2209.00078),
t the temperature; β = 0 is the uniform distribution. The same β means the same π in every loss
(the kernel, triplet / margin), in the strategies (`Tilt`), in their
diagnostics and in offline mining's ``sampling="tilted"``. The kernel folds the product into its
fused chunk pass (``A = β · S`` with ``S`` already divided by t), which is this formula.
"""

from __future__ import annotations

from typing import overload

import numpy as np
from torch import Tensor


@overload
def tilt_log_weights(s: Tensor, beta: float, t: float) -> Tensor: ...
@overload
def tilt_log_weights(s: np.ndarray, beta: float, t: float) -> np.ndarray: ...
def tilt_log_weights(s: Tensor | np.ndarray, beta: float, t: float) -> Tensor | np.ndarray:
    """Unnormalised log π: ``β s / t`` (torch tensors or numpy arrays)."""
    return s * (beta / t)
