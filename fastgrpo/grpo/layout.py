"""The per-row statistics both backends write, one fp32 row of ``NUM_STATS`` columns per sequence.

Row sums run over the sequence's tokens (deterministic, in token order); the batch-level sums over rows happen
afterwards in ``finalize.py``. Columns marked "token" are masked sums over tokens; "row" columns hold one value per
sequence (trl's ``(B, 1)``-shaped tensors: sequence-level clip indicators and vespo's ``phi_seq``).
"""

from __future__ import annotations

ROW_LOSS = 0  # token: sum_t per_token_loss * mask (the policy term already carries every multiplier)
ROW_COUNT = 1  # token: sum_t mask
KL_SUM = 2  # token: sum_t per_token_kl * mask (per_token_kl includes the bias-correction factor)
ENTROPY_SUM = 3  # token: sum_t entropies * mask
ENTROPY_BONUS_SUM = 4  # token: sum_t entropies * mask * entropy_mask (the entropy bonus' effective mask)
ENTROPY_BONUS_COUNT = 5  # token: sum_t mask * entropy_mask
CLIP_LOW = 6  # token-level IS: masked count of low-clipped tokens; sequence-level IS: 0/1 per row
CLIP_HIGH = 7
CLIP_REGION = 8
CISPO_CLIP = 9  # token: masked count of tokens with ratio > epsilon_high and A > 0
PHI_SEQ = 10  # row: vespo's gamma weight phi(w) of the sequence
NUM_STATS = 11
