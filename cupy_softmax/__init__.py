"""cupy_softmax: scipy.special's softmax family on the GPU, built on the online softmax.

NumPy arrays, array-likes and scalars run a blocked NumPy path and return what
``scipy.special`` returns; CuPy arrays run our CUDA kernels and return CuPy
arrays.  See ``SoftmaxState`` for the streaming API, ``attention`` for blocked
(FlashAttention-style) attention and ``merge_attention`` for combining partial
attention over disjoint keys by their log-sum-exp.
"""

from ._attention import attention, merge_attention, merge_attention_pair
from ._api import (
    SoftmaxState,
    log_softmax,
    log_softmax_from_state,
    logsumexp,
    merge_states,
    partial_state,
    softmax,
    softmax_from_state,
    state_logsumexp,
)

__version__ = "0.1.0"

__all__ = ["softmax", "log_softmax", "logsumexp", "SoftmaxState", "partial_state",
           "merge_states", "state_logsumexp", "softmax_from_state", "log_softmax_from_state",
           "attention", "merge_attention", "merge_attention_pair"]
