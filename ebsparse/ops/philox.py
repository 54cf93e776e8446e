"""Pure-PyTorch Philox4x32-10 and the dropout keep mask it gives: the reference the native dropout
kernel (csrc/cpu/activation/dropout.cpp) is tested against, bit for bit.

Philox4x32-10 (Salmon et al., SC'11) maps a 128-bit counter and a 64-bit key to four 32-bit words
in ten rounds of two 32x32->64-bit multiplies. Here every 32-bit word lives in an int64 tensor, and
each product is formed from 16-bit halves so that no intermediate leaves int64's range.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_MUL = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
BLOCK = 32  # elements per eight counters (see keep_mask)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * b for a constant a < 2^32 and words b."""
    low, high = a * (b & 0xFFFF), a * (b >> 16)  # each < 2^48
    s = low + ((high & 0xFFFF) << 16)
    return (s >> 32) + (high >> 16), s & _M32


def philox4x32(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 of counters (..., 4) (int64 holding 32-bit words) under key (k0, k1); returns
    the four output words, shaped like `counter`."""
    c0, c1, c2, c3 = (counter[..., i] & _M32 for i in range(4))
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(_MUL[0], c0)
        hi1, lo1 = _mulhilo(_MUL[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _WEYL[0]) & _M32, (k1 + _WEYL[1]) & _M32
    return torch.stack((c0, c1, c2, c3), dim=-1)


def keep_mask(numel: int, p: float, seed: int) -> torch.Tensor:
    """Bool (numel,): which elements dropout keeps. Element e = 32 b + 8 w + j takes word w of the
    counter (8 b + j) (its low 64 bits, as two words) under key (seed's low word, high word), and
    is kept when that word is below round((1 - p) 2^32)."""
    e = torch.arange(numel, dtype=torch.int64)
    counter = (e // BLOCK) * 8 + e % 8
    words = philox4x32(torch.stack((counter & _M32, counter >> 32, 0 * e, 0 * e), dim=-1),
                       (seed & _M32, (seed >> 32) & _M32))
    word = words.gather(1, ((e // 8) % 4).unsqueeze(1)).squeeze(1)
    return word < round((1.0 - p) * 2**32)
